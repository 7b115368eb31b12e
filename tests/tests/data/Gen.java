import org.HdrHistogram.Histogram;
import java.io.*;

public class Gen {
    public static void main(String[] a) throws Exception {
        // Fixture 1: values 1..=10000 once each, auto-resizing 3-digit histogram, scaling 1.0.
        Histogram h1 = new Histogram(3);
        for (long v = 1; v <= 10000; v++) h1.recordValue(v);
        try (PrintStream ps = new PrintStream(new FileOutputStream("seq_1_10000_scale1.hgrm"))) {
            h1.outputPercentileDistribution(ps, 5, 1.0);
        }
        // Same histogram as ms with values taken as microseconds (scaling 1000.0).
        try (PrintStream ps = new PrintStream(new FileOutputStream("seq_1_10000_scale1000.hgrm"))) {
            h1.outputPercentileDistribution(ps, 5, 1000.0);
        }
        // Fixture 3: an empty auto-resizing 3-digit histogram, scaling 1e6.
        try (PrintStream ps = new PrintStream(new FileOutputStream("empty_scale1e6.hgrm"))) {
            new Histogram(3).outputPercentileDistribution(ps, 5, 1000000.0);
        }
        // Fixture 4: 2 significant digits, values 1..=2000, scaling 8.0: many values/8 are
        // exact ties at 2 decimals (e.g. 1.125), where Java's HALF_UP differs from half-even.
        Histogram h4 = new Histogram(2);
        for (long v = 1; v <= 2000; v++) h4.recordValue(v);
        try (PrintStream ps = new PrintStream(new FileOutputStream("seq_1_2000_sig2_scale8.hgrm"))) {
            h4.outputPercentileDistribution(ps, 5, 8.0);
        }
        // Fixture 2: 100000 pseudo-random nanosecond latencies (64-bit LCG), bounded histogram,
        // shown in milliseconds (scaling 1e6).
        Histogram h2 = new Histogram(1, 3_600_000_000_000L, 3);
        long s = 42;
        for (int i = 0; i < 100000; i++) {
            s = s * 6364136223846793005L + 1442695040888963407L;
            long u = (s >>> 33);              // 31 random bits
            long base = 50_000 + (u % 950_000); // 50us..1ms
            if ((u & 0x3ff) == 0) base *= 40;   // a slow tail
            h2.recordValue(base);
        }
        try (PrintStream ps = new PrintStream(new FileOutputStream("lcg_ns_scale1e6.hgrm"))) {
            h2.outputPercentileDistribution(ps, 5, 1000000.0);
        }
    }
}
