// Kafka's own Java producer, for testing the worker against records it did
// not write itself. Run in source-file mode with the broker's jars:
//
//   java -cp '<kafka libs>/*' Produce.java <bootstrap servers> < jobs
//
// Standard input holds jobs. A line "@ <topic> <compression> <plain|txn>"
// starts one (a producer of its own, with compression.type set); each line
// after it is "<partition>\t<value>". In txn mode the records go out in
// transactions of TXN_SIZE, and every third transaction (the 2nd, 5th, ...)
// is aborted. For each aborted record it prints "aborted <topic> <n>" (n
// counts the job's records from 0), and "done <topic> <records>" per job.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Produce {
    static final int TXN_SIZE = 7;

    record Job(String topic, String compression, boolean transactional, List<String[]> lines) {}

    public static void main(String[] args) throws Exception {
        List<Job> jobs = new ArrayList<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.startsWith("@ ")) {
                String[] head = line.split(" ");
                jobs.add(new Job(head[1], head[2], head[3].equals("txn"), new ArrayList<>()));
            } else if (!line.isEmpty()) {
                jobs.get(jobs.size() - 1).lines().add(line.split("\t", 2));
            }
        }
        for (Job job : jobs) {
            run(args[0], job);
        }
    }

    static void run(String servers, Job job) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, servers);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, job.compression());
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        if (job.transactional()) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "produce-" + job.topic());
        }
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            if (job.transactional()) {
                producer.initTransactions();
            }
            List<String[]> lines = job.lines();
            int step = job.transactional() ? TXN_SIZE : Math.max(1, lines.size());
            for (int start = 0; start < lines.size(); start += step) {
                int end = Math.min(lines.size(), start + step);
                boolean abort = job.transactional() && (start / step) % 3 == 1;
                if (job.transactional()) {
                    producer.beginTransaction();
                }
                for (int i = start; i < end; i++) {
                    String[] record = lines.get(i);
                    producer.send(new ProducerRecord<>(job.topic(), Integer.parseInt(record[0]),
                            null, record[1].getBytes(StandardCharsets.UTF_8)));
                    if (abort) {
                        System.out.println("aborted " + job.topic() + " " + i);
                    }
                }
                if (abort) {
                    // Sent first, so the aborted records are in the log and
                    // the consumer must skip them.
                    producer.flush();
                    producer.abortTransaction();
                } else if (job.transactional()) {
                    producer.commitTransaction();
                } else {
                    producer.flush();
                }
            }
        }
        System.out.println("done " + job.topic() + " " + job.lines().size());
    }
}
