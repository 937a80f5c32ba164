//! The least privilege each hookfold client needs, as `kafka-acls.sh` command lines: what
//! `hookfold-gateway --print-acls` and `hookfold-processor acls` print, and what the
//! secured tests grant (and nothing more) before they run the binaries.

use std::fmt::Write as _;

/// A resource an ACL is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Topic(String),
    Group(String),
    /// Every group whose id starts with this (the processor's group and its `.restore`
    /// and `.rebuild` readers).
    GroupPrefix(String),
    /// Every transactional id that starts with this (the processor's producers under
    /// `processing.guarantee = "exactly_once"`).
    TransactionalIdPrefix(String),
    Cluster,
}

/// Operations allowed to one principal on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub resource: Resource,
    pub operations: Vec<&'static str>,
    /// Why the client needs it, for a person reading the list.
    pub why: &'static str,
}

impl Acl {
    pub fn new(resource: Resource, operations: &[&'static str], why: &'static str) -> Self {
        Self {
            resource,
            operations: operations.to_vec(),
            why,
        }
    }

    /// The arguments of `kafka-acls.sh` that add it for `principal` (after the
    /// connection arguments).
    pub fn add_arguments(&self, principal: &str) -> Vec<String> {
        let mut args = vec![
            "--add".to_string(),
            "--allow-principal".to_string(),
            principal.to_string(),
        ];
        for operation in &self.operations {
            args.push("--operation".into());
            args.push((*operation).into());
        }
        match &self.resource {
            Resource::Topic(name) => args.extend(["--topic".into(), name.clone()]),
            Resource::Group(name) => args.extend(["--group".into(), name.clone()]),
            Resource::GroupPrefix(prefix) => args.extend([
                "--resource-pattern-type".into(),
                "prefixed".into(),
                "--group".into(),
                prefix.clone(),
            ]),
            Resource::TransactionalIdPrefix(prefix) => args.extend([
                "--resource-pattern-type".into(),
                "prefixed".into(),
                "--transactional-id".into(),
                prefix.clone(),
            ]),
            Resource::Cluster => args.push("--cluster".into()),
        }
        args
    }
}

/// The list as a shell script an operator runs with an admin's connection settings.
pub fn script(client: &str, principal: &str, acls: &[Acl]) -> String {
    let mut out = format!(
        "# Least-privilege ACLs for {client} as {principal}.\n\
         # Run with an admin's connection: BOOTSTRAP=<servers> ADMIN_CONFIG=<admin.properties>\n"
    );
    for acl in acls {
        let _ = writeln!(out, "# {}", acl.why);
        let _ = writeln!(
            out,
            "kafka-acls.sh --bootstrap-server \"$BOOTSTRAP\" --command-config \"$ADMIN_CONFIG\" {}",
            acl.add_arguments(principal).join(" ")
        );
    }
    out
}

/// The arguments after `kafka-acls.sh --bootstrap-server .. --command-config ..` of every
/// command line in a [`script`], for a caller that runs them itself.
pub fn parse_script(script: &str) -> Vec<Vec<String>> {
    script
        .lines()
        .filter(|line| line.starts_with("kafka-acls.sh "))
        .filter_map(|line| line.split_once(" --add "))
        .map(|(_, rest)| {
            std::iter::once("--add".to_string())
                .chain(rest.split_whitespace().map(str::to_owned))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_round_trips_to_its_arguments() {
        let acls = [
            Acl::new(
                Resource::Topic("hookfold.webhooks".into()),
                &["Write", "Describe"],
                "append webhooks",
            ),
            Acl::new(
                Resource::GroupPrefix("hookfold-processor".into()),
                &["Read"],
                "the group",
            ),
            Acl::new(Resource::Cluster, &["IdempotentWrite"], "idempotence"),
        ];
        let text = script("hookfold-gateway", "User:gw", &acls);
        let parsed = parse_script(&text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0], acls[0].add_arguments("User:gw"));
        assert_eq!(
            parsed[1].join(" "),
            "--add --allow-principal User:gw --operation Read --resource-pattern-type prefixed --group hookfold-processor"
        );
        assert_eq!(parsed[2].last().map(String::as_str), Some("--cluster"));
    }
}
