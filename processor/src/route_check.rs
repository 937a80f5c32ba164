//! `hookfold-processor routes`: which route an entity gets and the options it then has, as
//! Alertmanager's `amtool config routes test` answers for its route tree. Pure: the same
//! `Rules::route` the fold uses, on a subject built from the command line.

use hookfold_rules::{RouteKind, Rules, Subject};
use serde_json::{Value, json};

/// An entity described on the command line (`routes`' flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RouteQuery {
    /// The webhook's source id (the gateway's [[sources]] id).
    #[arg(long, default_value = "")]
    pub source: String,
    /// build, agent, pull_request or branch; default: agent with --agent-meta, build with
    /// --pipeline.
    #[arg(long, value_parser = parse_route_kind)]
    pub kind: Option<RouteKind>,
    /// A Buildkite pipeline's slug.
    #[arg(long)]
    pub pipeline: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    /// A pipeline's repository URL or a Bitbucket repository's full name.
    #[arg(long)]
    pub repository: Option<String>,
    /// One of the agent's meta-data, key=value (repeatable).
    #[arg(long = "agent-meta")]
    pub agent_meta: Vec<String>,
}

/// `build`, `agent`, `pull_request` (or `pull-request`), `branch`.
pub fn parse_route_kind(text: &str) -> Result<RouteKind, String> {
    let name = text.trim().replace('-', "_");
    RouteKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == name)
        .ok_or_else(|| format!("{text:?} is not build, agent, pull_request or branch"))
}

/// The answer: the route (or none), its labels, and the effective options of the kind.
pub fn explain(rules: &Rules, query: &RouteQuery) -> Result<Value, String> {
    let kind = match query.kind {
        Some(kind) => kind,
        None if !query.agent_meta.is_empty() => RouteKind::Agent,
        None if query.pipeline.is_some() => RouteKind::Build,
        None => return Err("say which kind of entity with --kind (build, agent, pull_request, branch), or give --pipeline or --agent-meta".into()),
    };
    let subject = Subject {
        source_id: &query.source,
        kind,
        pipeline: query.pipeline.as_deref(),
        branch: query.branch.as_deref(),
        repository: query.repository.as_deref(),
        agent_meta: &query.agent_meta,
    };
    let route = rules.route(&subject);
    let position = route.and_then(|r| rules.routes.iter().position(|x| x.name == r.name));
    let (section, options) = match kind {
        RouteKind::Build => ("builds", serde_json::to_value(&*rules.builds_under(route))),
        RouteKind::Agent => ("agents", serde_json::to_value(&*rules.agents_under(route))),
        RouteKind::PullRequest | RouteKind::Branch => (
            "bitbucket",
            serde_json::to_value(&*rules.bitbucket_under(route)),
        ),
    };
    let group = route.and_then(|r| {
        let values = r.group_values(&subject)?;
        Some(json!({
            "dedup_key": hookfold_rules::groups::group_key(r, |field| {
                values.get(field).map(String::as_str)
            }),
            "by": r.group_by,
            "values": values,
            "group_wait": humantime::format_duration(r.group_wait()).to_string(),
            "group_interval": humantime::format_duration(r.group_interval()).to_string(),
            "min_connected": r.pool(),
        }))
    });
    Ok(json!({
        "kind": kind.as_str(),
        "route": route.map(|r| r.name.clone()),
        "position": position.map(|p| p + 1),
        "routes": rules.routes.len(),
        "labels": route.map(|r| r.labels.clone()).unwrap_or_default(),
        "group": group,
        "section": section,
        "options": options.map_err(|e| e.to_string())?,
    }))
}

/// The answer for people: the route, its labels, then the options as TOML-like lines.
pub fn human(answer: &Value) -> String {
    let mut out = match (answer["route"].as_str(), answer["position"].as_u64()) {
        (Some(route), Some(position)) => format!(
            "route: {route} (the {} of {} routes)\n",
            ordinal(position),
            answer["routes"]
        ),
        _ => format!(
            "route: none of the {} routes matches: the [rules.*] sections apply\n",
            answer["routes"]
        ),
    };
    let labels: Vec<String> = answer["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "labels: {}\n",
        if labels.is_empty() {
            "(none)".to_owned()
        } else {
            labels.join(" ")
        }
    ));
    let group = &answer["group"];
    out.push_str(&match group["dedup_key"].as_str() {
        Some(key) => format!(
            "group: {key} (by {}; group_wait {}, group_interval {}{})\n",
            group["by"]
                .as_array()
                .map(|by| by
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            group["group_wait"].as_str().unwrap_or_default(),
            group["group_interval"].as_str().unwrap_or_default(),
            group["min_connected"]
                .as_u64()
                .map(|n| format!("; a pool of at least {n} connected"))
                .unwrap_or_default(),
        ),
        None => "group: none (each incident is its own)\n".to_owned(),
    });
    out.push_str(&format!(
        "\n[rules.{}] for this {}:\n",
        answer["section"].as_str().unwrap_or_default(),
        answer["kind"].as_str().unwrap_or_default()
    ));
    if let Some(options) = answer["options"].as_object() {
        for (key, value) in options {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes of rules' tests (payments, spot-fleet, docs, web-experiments, web).
    const ORG: &str = include_str!("../../rules/tests/fixtures/routes.toml");

    fn query(args: &[(&str, &str)]) -> RouteQuery {
        let mut q = RouteQuery {
            source: "buildkite-acme".into(),
            ..RouteQuery::default()
        };
        for (flag, value) in args {
            match *flag {
                "source" => q.source = value.to_string(),
                "kind" => q.kind = Some(parse_route_kind(value).unwrap()),
                "pipeline" => q.pipeline = Some(value.to_string()),
                "branch" => q.branch = Some(value.to_string()),
                "repository" => q.repository = Some(value.to_string()),
                "agent-meta" => q.agent_meta.push(value.to_string()),
                _ => unreachable!("{flag}"),
            }
        }
        q
    }

    /// Flags, the route expected, an option and its value expected.
    type Case = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        &'static str,
        Value,
    );

    /// Ten sample entities of an org and the route and one option each gets.
    #[test]
    fn ten_sample_entities_get_the_route_and_options_they_should() {
        let rules: Rules = toml::from_str(ORG).unwrap();
        rules.validate().unwrap();
        let cases: [Case; 10] = [
            (
                &[("pipeline", "payments-api"), ("branch", "main")],
                Some("payments"),
                "open_after_failures",
                json!(2),
            ),
            (
                &[("pipeline", "payments-api"), ("branch", "main")],
                Some("payments"),
                "default_severity",
                json!("critical"),
            ),
            (
                &[("pipeline", "payments-api"), ("branch", "release/3")],
                Some("payments"),
                "open_after_failures",
                json!(2),
            ),
            (
                &[("pipeline", "payments-api"), ("branch", "feature/x")],
                None,
                "open_after_failures",
                json!(1),
            ),
            (
                &[("pipeline", "docs-site"), ("branch", "main")],
                Some("docs"),
                "enabled",
                json!(false),
            ),
            (
                &[("pipeline", "search"), ("branch", "main")],
                None,
                "default_severity",
                json!("error"),
            ),
            (
                &[("agent-meta", "queue=spot-a"), ("agent-meta", "os=linux")],
                Some("spot-fleet"),
                "grace",
                json!("0s"),
            ),
            (&[("agent-meta", "queue=metal")], None, "grace", json!("5m")),
            (
                &[
                    ("source", "bitbucket-acme"),
                    ("kind", "pull-request"),
                    ("repository", "acme/web"),
                ],
                Some("web"),
                "pull_request_severity",
                json!("info"),
            ),
            (
                &[
                    ("kind", "branch"),
                    ("repository", "acme/web"),
                    ("branch", "experiment/b"),
                ],
                Some("web-experiments"),
                "branches",
                json!(false),
            ),
        ];
        for (args, route, option, value) in cases {
            let answer = explain(&rules, &query(args)).unwrap();
            assert_eq!(answer["route"].as_str(), route, "{args:?}");
            assert_eq!(answer["options"][option], value, "{args:?}: {option}");
        }
        let payments = explain(
            &rules,
            &query(&[("pipeline", "payments-api"), ("branch", "main")]),
        )
        .unwrap();
        let text = human(&payments);
        assert!(
            text.starts_with("route: payments (the 1st of 5 routes)\n"),
            "{text}"
        );
        assert!(
            text.contains("labels: service=payments-api team=payments\n"),
            "{text}"
        );
        assert!(
            text.contains("[rules.builds] for this build:\n")
                && text.contains("\nopen_after_failures = 2\n"),
            "{text}"
        );
        let none = explain(&rules, &query(&[("pipeline", "search")])).unwrap();
        assert!(human(&none).starts_with("route: none of the 5 routes matches"));
    }

    #[test]
    fn a_grouping_route_names_the_entitys_group() {
        let rules: Rules = toml::from_str(
            r#"
            [[routes]]
            name = "spot-fleet"
            agent_meta = ["queue=spot-*"]
            labels = { team = "ci-infra" }
            group_by = ["queue", "team"]
            group_wait = "20s"
            min_connected = 4
            "#,
        )
        .unwrap();
        rules.validate().unwrap();
        let answer = explain(&rules, &query(&[("agent-meta", "queue=spot-a")])).unwrap();
        assert_eq!(
            answer["group"]["dedup_key"],
            "route/spot-fleet/group/spot-a/ci-infra"
        );
        let text = human(&answer);
        assert!(
            text.contains(
                "group: route/spot-fleet/group/spot-a/ci-infra (by queue, team; group_wait 20s, group_interval 5m; a pool of at least 4 connected)\n"
            ),
            "{text}"
        );
        let other = explain(&rules, &query(&[("agent-meta", "queue=metal")])).unwrap();
        assert!(human(&other).contains("group: none"));
    }

    #[test]
    fn an_entity_of_no_kind_is_refused() {
        let rules = Rules::default();
        assert!(
            explain(&rules, &query(&[("branch", "main")]))
                .unwrap_err()
                .contains("--kind")
        );
        assert!(parse_route_kind("test").is_err());
    }
}
