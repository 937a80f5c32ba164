//! The ACLs the processor's principal needs, from its configuration alone (`acls`): one
//! entry per resource, each with why, so an SRE can grant exactly these.

use hookfold_kafka::acl::{Acl, Resource as AclResource};

use super::ProcessorConfig;

impl ProcessorConfig {
    /// The ACLs the processor's Kafka principal needs for `run`, `tail`, `topics` (without
    /// `--create`) and `rebuild`, and no more; with `create_topics`, also what
    /// `topics --create` needs.
    pub fn acls(&self, create_topics: bool) -> Vec<Acl> {
        let k = &self.kafka;
        let input = if self.tick_interval.is_zero() {
            Acl::new(
                AclResource::Topic(k.input_topic.clone()),
                &["Read", "Describe"],
                "consume the webhook topic (the event log; rebuild reads it too)",
            )
        } else {
            Acl::new(
                AclResource::Topic(k.input_topic.clone()),
                &["Read", "Write", "Describe"],
                "consume the webhook topic (the event log; rebuild reads it too); Write: \
                 hookfold.tick records on quiet partitions it owns (tick_interval)",
            )
        };
        let mut acls = vec![
            input,
            Acl::new(
                AclResource::Topic(k.output_topic.clone()),
                &["Write", "Describe"],
                "emit incident events (tail reads them: add Read for a principal that tails)",
            ),
            Acl::new(
                AclResource::Topic(k.open_incidents_topic()),
                &["Read", "Write", "Describe", "DescribeConfigs"],
                "keep the open-incident table (rebuild reads it; `topics` checks compaction)",
            ),
            Acl::new(
                AclResource::Topic(k.changelog_topic()),
                &["Read", "Write", "Describe", "DescribeConfigs"],
                "write state changes and batch markers, restore from them; `topics` checks compaction",
            ),
            Acl::new(
                AclResource::Topic(k.groups_topic()),
                &["Read", "Write", "Describe"],
                "the members of grouped routes, repartitioned by group (rules.routes group_by)",
            ),
            Acl::new(
                AclResource::GroupPrefix(k.group_id.clone()),
                &["Read", "Describe"],
                "the consumer group and its .restore/.rebuild reader ids (Describe: rebuild checks the group is empty)",
            ),
            Acl::new(
                AclResource::Cluster,
                &["IdempotentWrite"],
                "the idempotent producers (acks=all, enable.idempotence=true)",
            ),
        ];
        if self.processing.exactly_once() {
            acls.push(Acl::new(
                AclResource::TransactionalIdPrefix(format!("{}.", k.group_id)),
                &["Write", "Describe"],
                "exactly_once: the transactional producer (transactional.id <group_id>.<instance>)",
            ));
        }
        if create_topics {
            acls.push(Acl::new(
                AclResource::Cluster,
                &["Create"],
                "`topics --create`: create the webhook, incident and changelog topics",
            ));
        }
        acls
    }
}
