package dev.hookfold.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * hookfold's build rules as a Kafka Streams application: the baseline the exactly-once
 * benchmark compares hookfold with, on the same broker and the same webhook topic.
 *
 * <p>Per pipeline and branch (the state store's key): a failed {@code build.finished} opens the
 * incident or updates the open one, a passed one (not {@code blocked}) resolves it, and a build
 * numbered below the newest verdict, or a verdict already applied to its number, is stale. The
 * state lives in a persistent (RocksDB) key-value store with its changelog, as hookfold's does;
 * one output record per transition, keyed by the incident's dedup key. Every other record of
 * the topic (other events, ticks) is read and ignored.
 *
 * <p>Arguments ({@code --name=value}): {@code bootstrap}, {@code input}, {@code output},
 * {@code application-id}, {@code guarantee} ({@code at_least_once} or {@code
 * exactly_once_v2}), {@code commit-ms} (hookfold's {@code batch.max_wait}), {@code state-dir}.
 * One stream thread. It runs until SIGTERM.
 */
public final class BuildRulesApp {
    static final String STORE = "builds";

    public static void main(String[] args) throws InterruptedException {
        Map<String, String> options = new HashMap<>();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (!arg.startsWith("--") || eq < 0) {
                System.err.println("usage: --bootstrap=H:P --input=T --output=T --application-id=ID "
                        + "--guarantee=at_least_once|exactly_once_v2 --commit-ms=50 --state-dir=DIR");
                System.exit(2);
            }
            options.put(arg.substring(2, eq), arg.substring(eq + 1));
        }
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, required(options, "application-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, required(options, "bootstrap"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
                options.getOrDefault("guarantee", StreamsConfig.AT_LEAST_ONCE));
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, options.getOrDefault("commit-ms", "50"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.STATE_DIR_CONFIG, required(options, "state-dir"));
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(
                        Stores.persistentKeyValueStore(STORE), Serdes.String(), Serdes.String())
                .withLoggingEnabled(Map.of()));
        builder.stream(required(options, "input"), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .process(BuildRules::new, STORE)
                .to(required(options, "output"), Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        // The benchmark waits for RUNNING before it sends the latency run's records.
        streams.setStateListener((now, before) -> System.err.println("hookfold-kstreams: state " + now));
        streams.start();
        stopped.await();
    }

    private static String required(Map<String, String> options, String name) {
        String value = options.get(name);
        if (value == null || value.isEmpty()) {
            System.err.println("missing --" + name);
            System.exit(2);
        }
        return value;
    }

    /** The rules of one record; the state of a scope is "highest,failed,passed,incident,seq". */
    static final class BuildRules implements Processor<byte[], byte[], String, String> {
        private static final ObjectMapper JSON = new ObjectMapper();
        private ProcessorContext<String, String> context;
        private KeyValueStore<String, String> store;

        @Override
        public void init(ProcessorContext<String, String> context) {
            this.context = context;
            this.store = context.getStateStore(STORE);
        }

        private static String header(Headers headers, String name) {
            Header header = headers.lastHeader(name);
            return header == null ? null : new String(header.value(), StandardCharsets.UTF_8);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            if (!"buildkite.build.finished".equals(header(record.headers(), "ce_type"))) {
                return;
            }
            String source = header(record.headers(), "ce_source");
            String ceId = header(record.headers(), "ce_id");
            if (source == null || !source.startsWith("/sources/") || record.value() == null) {
                return;
            }
            JsonNode body;
            try {
                body = JSON.readTree(record.value());
            } catch (java.io.IOException e) {
                return; // not JSON: hookfold counts it as malformed and skips it too
            }
            JsonNode build = body.path("build");
            String slug = body.path("pipeline").path("slug").asText("");
            String branch = build.path("branch").asText("");
            long number = build.path("number").asLong(-1);
            String state = build.path("state").asText("");
            boolean failed = state.equals("failed");
            boolean passed = state.equals("passed") && !build.path("blocked").asBoolean(false);
            if (slug.isEmpty() || number < 0 || !(failed || passed)) {
                return;
            }
            String sourceId = source.substring("/sources/".length());
            String scope = sourceId + "/pipeline/" + slug + "/branch/" + branch;
            String[] stored = store.get(scope) == null ? new String[] {"0", "0", "0", "", "0"}
                    : store.get(scope).split(",", -1);
            long highest = Long.parseLong(stored[0]);
            boolean failedApplied = stored[1].equals("1");
            boolean passedApplied = stored[2].equals("1");
            String incident = stored[3];
            long sequence = Long.parseLong(stored[4]);
            if (number < highest || (number == highest && (failed ? failedApplied : passedApplied))) {
                return; // stale, or a verdict already applied to this number
            }
            if (number > highest) {
                highest = number;
                failedApplied = false;
                passedApplied = false;
            }
            String dedupKey = "buildkite/" + scope;
            String transition = null;
            if (failed) {
                failedApplied = true;
                if (incident.isEmpty()) {
                    incident = ceId == null ? Long.toString(number) : ceId;
                    sequence = 0;
                    transition = "created";
                } else {
                    sequence += 1;
                    transition = "updated";
                }
            } else {
                passedApplied = true;
                if (!incident.isEmpty()) {
                    sequence += 1;
                    transition = "resolved";
                }
            }
            if (transition != null) {
                ObjectNode out = JSON.createObjectNode();
                out.put("transition", transition);
                out.put("dedup_key", dedupKey);
                out.put("incident_id", incident);
                out.put("sequence", sequence);
                out.put("build_number", number);
                out.put("cause_ce_id", ceId);
                context.forward(new Record<>(dedupKey, out.toString(), record.timestamp()));
            }
            if ("resolved".equals(transition)) {
                incident = "";
                sequence = 0;
            }
            store.put(scope, highest + "," + (failedApplied ? 1 : 0) + "," + (passedApplied ? 1 : 0)
                    + "," + incident + "," + sequence);
        }
    }
}
