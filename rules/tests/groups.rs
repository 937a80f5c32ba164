//! Groups through both stages, as the processor runs them: input partitions fold their
//! entities and send member records and their clocks; one group partition takes them in
//! whatever order they arrive, repeats included, and releases them by the low watermark.
//! What comes out must be the same for every order.

mod support;

use hookfold_proto::v1::{EntityKind, IncidentEvent, Transition};
use hookfold_rules::Rules;
use hookfold_rules::groups::{
    GroupRecord, GroupStage, HeldChanges, MemoryGroups, Position, presence_record, split_members,
};
use serde_json::json;
use support::*;
use time::OffsetDateTime;

/// The spot fleet grouped by queue, the web pipelines by team: see the file.
const ROUTES: &str = include_str!("fixtures/groups.toml");

fn rules() -> Rules {
    rules_of(ROUTES)
}

fn rules_of(routes: &str) -> Rules {
    let rules: Rules = toml::from_str(routes).unwrap();
    rules.validate().unwrap();
    rules
}

fn ms(millis: i64) -> time::Duration {
    time::Duration::milliseconds(millis)
}

fn spot(action: &str, n: usize, queue: &str) -> Hook {
    agent(action, &format!("{queue}-{n}-id"), &format!("{queue}-{n}")).with(
        "/agent/meta_data",
        json!([format!("queue={queue}"), "os=linux"]),
    )
}

/// Input partitions folding their records, and what each sent to the groups topic.
struct Cluster {
    runs: Vec<Run>,
    /// The next offset of each input partition (webhooks and ticks alike).
    offsets: Vec<i64>,
    /// The last offset each partition sent its clock after.
    clocked: Vec<Option<i64>>,
    /// Each partition's group records, in the order it sent them.
    sent: Vec<Vec<GroupRecord>>,
    /// What was published without a group.
    published: Vec<IncidentEvent>,
}

impl Cluster {
    fn new(partitions: usize) -> Self {
        Self::with(partitions, rules())
    }

    fn with(partitions: usize, rules: Rules) -> Self {
        Self {
            runs: (0..partitions)
                .map(|p| {
                    let mut run = Run::new(rules.clone());
                    run.partition = p as i32;
                    run
                })
                .collect(),
            offsets: vec![0; partitions],
            clocked: vec![None; partitions],
            sent: vec![Vec::new(); partitions],
            published: Vec::new(),
        }
    }

    fn partitions(&self) -> i32 {
        self.runs.len() as i32
    }

    /// Stage 1 of one record on `partition`.
    fn fold(&mut self, partition: usize, hook: &Hook) {
        let offset = self.offsets[partition];
        self.offsets[partition] += 1;
        let run = &mut self.runs[partition];
        let events = run.apply(&hook.clone().offset(offset));
        let now = run.clock.watermark().expect("a record moves the clock");
        let (published, mut members) =
            split_members(events, &run.rules, partition as i32, offset, now);
        if let Some((event, cause)) = run.last.take() {
            let key = event.routing_key().unwrap_or_default();
            let state = run.states.get(key.as_bytes()).cloned().unwrap_or_default();
            let position = Position {
                offset,
                seq: members.len() as u32,
            };
            members.extend(presence_record(
                &event,
                &state,
                &run.rules,
                &cause,
                partition as i32,
                position,
                now,
            ));
        }
        self.published.extend(published);
        self.sent[partition].extend(members);
    }

    /// The end of a batch on `partition`: its clock goes to the group partitions (unless
    /// nothing was folded since the last).
    fn batch_end(&mut self, partition: usize) {
        let last = self.offsets[partition] - 1;
        if self.clocked[partition] == Some(last) {
            return;
        }
        self.clocked[partition] = Some(last);
        if let Some(now) = self.runs[partition].clock.watermark() {
            self.sent[partition].push(GroupRecord::clock(
                partition as i32,
                Position::after(last),
                now,
            ));
        }
    }

    /// A tick at `time` on every partition, each a batch of its own.
    fn tick_all(&mut self, time: OffsetDateTime) {
        for partition in 0..self.runs.len() {
            self.fold(partition, &tick(time));
            self.batch_end(partition);
        }
    }

    /// Records spread over the partitions by `partition_of`, in time order, a batch every
    /// `batch` records of a partition.
    fn fold_all(&mut self, hooks: &[(usize, Hook)], batch: usize) {
        let mut counts = vec![0usize; self.runs.len()];
        for (partition, hook) in hooks {
            self.fold(*partition, hook);
            counts[*partition] += 1;
            if counts[*partition].is_multiple_of(batch) {
                self.batch_end(*partition);
            }
        }
        for partition in 0..self.runs.len() {
            self.batch_end(partition);
        }
    }

    /// Stage 2: one group partition takes every record, the sources' records interleaved as
    /// `order` picks them (each source's own in order) and each given `copies` times in a
    /// row (a batch redone), releasing after every record; with `restart_every`, the
    /// partition is taken on by a new process after every so many new records (the held
    /// changes forgotten and read again from where the stage says); returns the groups'
    /// events.
    fn deliver(
        &self,
        order: Order,
        copies: usize,
        restart_every: Option<usize>,
    ) -> Vec<IncidentEvent> {
        let log = self.groups_topic(order, copies);
        let mut stage = GroupStage::default();
        let mut groups = MemoryGroups::default();
        let mut held = HeldChanges::default();
        let rules = self.runs[0].rules.clone();
        let mut out = Vec::new();
        let (mut cursor, mut reached, mut since_restart) = (0usize, 0usize, 0usize);
        while cursor < log.len() {
            let (record, first_copy) = &log[cursor];
            let new = cursor >= reached;
            let taken = stage.take(cursor as i64, record.clone(), &mut held);
            if new {
                assert_eq!(
                    taken, *first_copy,
                    "a repeat is dropped, the first copy taken"
                );
                reached = cursor + 1;
                since_restart += 1;
            } else {
                assert!(!taken, "a record read again is not taken again");
            }
            cursor += 1;
            out.extend(
                stage
                    .release(self.partitions(), &mut held, &mut groups, &rules)
                    .unwrap(),
            );
            if restart_every.is_some_and(|every| since_restart == every) {
                since_restart = 0;
                held = HeldChanges::default();
                cursor = stage.replay_from().unwrap_or(0) as usize;
            }
        }
        assert_eq!(stage.lost(), 0);
        out
    }

    /// The groups topic as `order` and `copies` make it: each record, and whether it is the
    /// first copy.
    fn groups_topic(&self, order: Order, copies: usize) -> Vec<(GroupRecord, bool)> {
        let mut next = vec![0usize; self.sent.len()];
        let mut log = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        loop {
            let open: Vec<usize> = (0..self.sent.len())
                .filter(|s| next[*s] < self.sent[*s].len())
                .collect();
            let Some(&first) = open.first() else { break };
            let source = match order {
                Order::SourceBySource => first,
                Order::RoundRobin => open[log.len() % open.len()],
                Order::Random => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    open[(seed % open.len() as u64) as usize]
                }
            };
            let record = &self.sent[source][next[source]];
            next[source] += 1;
            for copy in 0..copies {
                log.push((record.clone(), copy == 0));
            }
        }
        log
    }
}

#[derive(Debug, Clone, Copy)]
enum Order {
    SourceBySource,
    RoundRobin,
    Random,
}

const ORDERS: [Order; 3] = [Order::SourceBySource, Order::RoundRobin, Order::Random];

trait WithOffset {
    fn offset(self, offset: i64) -> Self;
}

impl WithOffset for Hook {
    fn offset(mut self, offset: i64) -> Self {
        self.offset = Some(offset);
        self
    }
}

/// Every order and repeats give the same events; returns them.
fn delivered(cluster: &Cluster) -> Vec<IncidentEvent> {
    let first = cluster.deliver(Order::SourceBySource, 1, None);
    for order in ORDERS {
        for copies in [1, 2] {
            for restart_every in [None, Some(1), Some(7)] {
                assert_eq!(
                    cluster.deliver(order, copies, restart_every),
                    first,
                    "{order:?}, each record {copies} times, restarted every {restart_every:?} records"
                );
            }
        }
    }
    first
}

fn transitions(events: &[IncidentEvent]) -> Vec<(Transition, String, usize)> {
    events
        .iter()
        .map(|e| (e.transition(), e.dedup_key.clone(), e.members.len()))
        .collect()
}

#[test]
fn three_hundred_lost_agents_of_one_queue_are_one_incident_listing_them_and_one_resolution() {
    let mut cluster = Cluster::new(3);
    // 300 spot agents lost within 20 s, spread over three partitions by name.
    let lost: Vec<(usize, Hook)> = (0..300)
        .map(|n| {
            (
                n % 3,
                spot("lost", n, "spot-a").at(BASE_TIME + ms(n as i64 * 66)),
            )
        })
        .collect();
    cluster.fold_all(&lost, 10);
    assert!(
        cluster.published.is_empty(),
        "a member's incident is not published"
    );
    cluster.tick_all(BASE_TIME + time::Duration::seconds(40));
    let back: Vec<(usize, Hook)> = (0..300)
        .map(|n| {
            let at = BASE_TIME + time::Duration::minutes(2) + ms(n as i64 * 66);
            (n % 3, spot("connected", n, "spot-a").at(at))
        })
        .collect();
    cluster.fold_all(&back, 7);
    cluster.tick_all(BASE_TIME + time::Duration::minutes(10));

    let events = delivered(&cluster);
    let key = "route/spot-fleet/group/spot-a";
    assert_eq!(
        transitions(&events),
        [
            (Transition::Created, key.to_owned(), 300),
            (Transition::Resolved, key.to_owned(), 0)
        ]
    );
    let created = &events[0];
    assert_eq!(
        created.occurred_at.unwrap().seconds,
        BASE_TIME.unix_timestamp() + 30,
        "group_wait after the first member went bad"
    );
    assert_eq!(created.details["members"], "300");
    assert_eq!(created.route, "spot-fleet");
    assert_eq!(
        created.labels,
        [("queue", "spot-a"), ("team", "ci-infra")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into_iter()
            .collect()
    );
    assert!(
        created
            .summary
            .starts_with("300 incidents of spot-fleet (queue=spot-a)"),
        "{}",
        created.summary
    );
    assert_eq!(
        created.members[0].dedup_key, "buildkite/acme/agent/spot-a-0",
        "members in the order they went bad"
    );
    assert_eq!(
        created.cause.as_ref().unwrap().offset,
        0,
        "attributed to the webhook of the first member"
    );
    let resolved = &events[1];
    assert_eq!(resolved.incident_id, created.incident_id);
    assert_eq!(
        resolved.occurred_at.unwrap().seconds,
        (BASE_TIME + time::Duration::minutes(2) + ms(299 * 66)).unix_timestamp(),
        "when the last member came back"
    );
    assert_eq!(resolved.sequence, 1);
}

#[test]
fn agents_of_two_queues_are_two_groups() {
    let mut cluster = Cluster::new(2);
    let lost: Vec<(usize, Hook)> = (0..20)
        .map(|n| {
            let queue = if n % 2 == 0 { "spot-a" } else { "spot-b" };
            (
                n % 2,
                spot("lost", n, queue).at(BASE_TIME + ms(n as i64 * 100)),
            )
        })
        .collect();
    cluster.fold_all(&lost, 3);
    cluster.tick_all(BASE_TIME + time::Duration::seconds(45));
    let events = delivered(&cluster);
    let mut seen = transitions(&events);
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                Transition::Created,
                "route/spot-fleet/group/spot-a".to_owned(),
                10
            ),
            (
                Transition::Created,
                "route/spot-fleet/group/spot-b".to_owned(),
                10
            ),
        ]
    );
}

#[test]
fn forty_pipelines_of_one_team_failing_within_group_wait_are_one_incident() {
    let mut cluster = Cluster::new(4);
    let failed: Vec<(usize, Hook)> = (0..40)
        .map(|n| {
            let hook = build_of(&format!("web-{n}"), 1, "failed", "main")
                .at(BASE_TIME + time::Duration::seconds(n as i64 * 2));
            (n % 4, hook)
        })
        .collect();
    cluster.fold_all(&failed, 4);
    cluster.tick_all(BASE_TIME + time::Duration::minutes(3));
    let events = delivered(&cluster);
    assert_eq!(
        transitions(&events),
        [(Transition::Created, "route/web/group/web".to_owned(), 40)]
    );
    assert_eq!(
        events[0].entity.as_ref().unwrap().kind(),
        EntityKind::Pipeline
    );
}

#[test]
fn a_group_of_one_reads_as_its_member_and_a_storm_over_before_group_wait_sends_nothing() {
    let mut cluster = Cluster::new(2);
    cluster.fold_all(&[(1, spot("lost", 7, "spot-c").at(BASE_TIME))], 1);
    cluster.tick_all(BASE_TIME + time::Duration::seconds(31));
    // Another queue: lost and back within its group_wait.
    cluster.fold_all(
        &[
            (
                0,
                spot("lost", 1, "spot-d").at(BASE_TIME + time::Duration::seconds(40)),
            ),
            (
                0,
                spot("connected", 1, "spot-d").at(BASE_TIME + time::Duration::seconds(50)),
            ),
        ],
        1,
    );
    cluster.tick_all(BASE_TIME + time::Duration::minutes(5));
    let events = delivered(&cluster);
    assert_eq!(
        transitions(&events),
        [(
            Transition::Created,
            "route/spot-fleet/group/spot-c".to_owned(),
            1
        )]
    );
    let one = &events[0];
    assert!(
        one.summary.contains("spot-c-7") && !one.summary.contains("incidents of"),
        "{}",
        one.summary
    );
    assert_eq!(one.entity.as_ref().unwrap().name, "spot-c-7");
    assert!(!one.links.is_empty(), "the member's links");
}

#[test]
fn an_open_group_is_updated_at_most_every_group_interval() {
    let mut cluster = Cluster::new(2);
    cluster.fold_all(&[(0, spot("lost", 0, "spot-a").at(BASE_TIME))], 1);
    cluster.tick_all(BASE_TIME + time::Duration::seconds(30));
    // Three more join over the next minute: one UPDATED, five minutes after the CREATED.
    for (n, seconds) in [(1usize, 60i64), (2, 70), (3, 90)] {
        cluster.fold_all(
            &[(
                n % 2,
                spot("lost", n, "spot-a").at(BASE_TIME + time::Duration::seconds(seconds)),
            )],
            1,
        );
    }
    cluster.tick_all(BASE_TIME + time::Duration::minutes(4));
    cluster.tick_all(BASE_TIME + time::Duration::minutes(6));
    let events = delivered(&cluster);
    let key = "route/spot-fleet/group/spot-a".to_owned();
    assert_eq!(
        transitions(&events),
        [
            (Transition::Created, key.clone(), 1),
            (Transition::Updated, key, 4)
        ]
    );
    assert_eq!(
        events[1].occurred_at.unwrap().seconds,
        BASE_TIME.unix_timestamp() + 30 + 300
    );
    assert_eq!(events[1].sequence, 1);
}

#[test]
fn nothing_is_released_until_every_input_partition_has_passed_it() {
    let mut cluster = Cluster::new(3);
    cluster.fold_all(&[(0, spot("lost", 0, "spot-a").at(BASE_TIME))], 1);
    // Partitions 0 and 1 are far ahead; partition 2 has sent nothing.
    for partition in 0..2 {
        cluster.fold(partition, &tick(BASE_TIME + time::Duration::minutes(10)));
        cluster.batch_end(partition);
    }
    assert!(delivered(&cluster).is_empty());
    cluster.fold(2, &tick(BASE_TIME + time::Duration::seconds(29)));
    cluster.batch_end(2);
    assert!(delivered(&cluster).is_empty(), "29 s: still waiting");
    cluster.fold(2, &tick(BASE_TIME + time::Duration::seconds(30)));
    cluster.batch_end(2);
    assert_eq!(delivered(&cluster).len(), 1);
}

#[test]
fn ungrouped_routes_and_no_route_publish_as_before() {
    let mut cluster = Cluster::new(1);
    cluster.fold_all(
        &[
            (0, spot("lost", 0, "metal").at(BASE_TIME)),
            (0, build_of("api", 1, "failed", "main").at(BASE_TIME)),
        ],
        1,
    );
    assert!(
        cluster.sent[0].iter().all(|r| r.group().is_none()),
        "clocks only"
    );
    assert_eq!(
        cluster.published.len(),
        1,
        "the build; the agent waits out its grace"
    );
}

/// A pool: spot-a wants at least 3 of its agents connected.
const POOL: &str = r#"
[[routes]]
name = "spot-fleet"
agent_meta = ["queue=spot-*"]
labels = { team = "ci-infra" }
group_by = ["queue"]
group_wait = "30s"
min_connected = 3
[routes.agents]
grace = "0s"
"#;

#[test]
fn a_pool_short_of_its_minimum_opens_once_and_resolves_when_enough_are_back() {
    let mut cluster = Cluster::with(2, rules_of(POOL));
    // Two connect: a fleet starting up, short of 3 but never at 3: nothing.
    let start: Vec<(usize, Hook)> = (0..2)
        .map(|n| {
            (
                n % 2,
                spot("connected", n, "spot-a").at(BASE_TIME + ms(n as i64 * 100)),
            )
        })
        .collect();
    cluster.fold_all(&start, 1);
    cluster.tick_all(BASE_TIME + time::Duration::minutes(2));
    let so_far = delivered(&cluster);
    assert!(so_far.is_empty(), "{:?}", transitions(&so_far));
    // Three more: 5 connected. Then 4 are lost within a second: 1 of at least 3.
    let mut story: Vec<(usize, Hook)> = (2..5)
        .map(|n| {
            let at = BASE_TIME + time::Duration::minutes(3) + ms(n as i64 * 100);
            (n % 2, spot("connected", n, "spot-a").at(at))
        })
        .collect();
    story.extend((0..4).map(|n| {
        let at = BASE_TIME + time::Duration::minutes(4) + ms(n as i64 * 200);
        (n % 2, spot("lost", n, "spot-a").at(at))
    }));
    cluster.fold_all(&story, 2);
    cluster.tick_all(BASE_TIME + time::Duration::minutes(5));
    // Two come back: 3 connected again.
    let back: Vec<(usize, Hook)> = (0..2)
        .map(|n| {
            let at = BASE_TIME + time::Duration::minutes(6) + ms(n as i64 * 100);
            (n % 2, spot("connected", n, "spot-a").at(at))
        })
        .collect();
    cluster.fold_all(&back, 1);
    cluster.tick_all(BASE_TIME + time::Duration::minutes(7));

    let events = delivered(&cluster);
    let pool: Vec<&IncidentEvent> = events
        .iter()
        .filter(|e| e.dedup_key == "route/spot-fleet/group/spot-a/pool")
        .collect();
    assert_eq!(
        pool.iter().map(|e| e.transition()).collect::<Vec<_>>(),
        [Transition::Created, Transition::Resolved],
        "{:?}",
        transitions(&events)
    );
    assert_eq!(
        pool[0].summary,
        "queue=spot-a: 1 of at least 3 agents connected"
    );
    assert_eq!(
        pool[0].occurred_at.unwrap().seconds,
        (BASE_TIME + time::Duration::minutes(4) + ms(400)).unix_timestamp() + 30,
        "group_wait after the pool fell short (at the third loss)"
    );
    assert_eq!(
        pool[0].labels.get("queue").map(String::as_str),
        Some("spot-a")
    );
    assert_eq!(pool[1].incident_id, pool[0].incident_id);
    assert_eq!(pool[1].details["connected"], "3");
    // The lost agents are a group as ever: its CREATED lists the four; the two back are
    // an UPDATED only at the next group_interval (5 min), after the story's end.
    let storm: Vec<_> = transitions(&events)
        .into_iter()
        .filter(|(_, key, _)| key == "route/spot-fleet/group/spot-a")
        .map(|(transition, _, members)| (transition, members))
        .collect();
    assert_eq!(storm, [(Transition::Created, 4)]);
}
