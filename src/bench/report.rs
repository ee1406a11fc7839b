//! What a benchmark measured: latency histograms per operation (HdrHistogram,
//! microseconds), errors by kind, reads that saw siblings, and a per-second
//! timeline (throughput and p99). Each worker thread records into its own
//! [`Recorder`]; they are merged once at the end. Output: a text summary,
//! a JSON report and an SVG chart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::bench::workload::OpKind;

/// Latencies above this are recorded as this (60 s).
const LATENCY_MAX_US: u64 = 60_000_000;
/// Seconds of timeline a run keeps at most (one day).
const TIMELINE_MAX_S: usize = 86_400;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// One second's histogram: 2 significant digits, growing only as far as
/// the latencies it sees, so a long run's timeline stays small.
fn second_histogram() -> Histogram<u64> {
    Histogram::new(2).expect("2 significant digits are valid")
}

/// One second of the timeline.
struct Second {
    ops: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// One thread's measurements.
pub(crate) struct Recorder {
    start: Instant,
    latency: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    sibling_reads: u64,
    /// Reads that found no value (the key absent or deleted).
    misses: u64,
    timeline: Vec<Second>,
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            latency: BTreeMap::new(),
            errors: BTreeMap::new(),
            sibling_reads: 0,
            misses: 0,
            timeline: Vec::new(),
        }
    }

    /// Records one operation that ended `at`, `latency` after it was due:
    /// `Ok(what a read saw)` or `Err(kind of error)`.
    pub(crate) fn record(&mut self, kind: OpKind, latency: Duration, result: Result<Seen, String>, at: Instant) {
        match result {
            Ok(seen) => self.record_done(kind, latency, at, &[seen]),
            Err(error) => self.record_errors(&error, 1, at),
        }
    }

    /// Records operations of `kind` that all succeeded and ended `at`,
    /// `latency` after they were due (a pipelined batch's), one per entry
    /// of `seen`: a histogram update for all of them, not one each.
    pub(crate) fn record_done(&mut self, kind: OpKind, latency: Duration, at: Instant, seen: &[Seen]) {
        if seen.is_empty() {
            return;
        }
        let n = seen.len() as u64;
        let us = (latency.as_micros().min(u128::from(LATENCY_MAX_US)) as u64).max(1);
        let record = |h: &mut Histogram<u64>| {
            // Within the bounds (clamped above), so it cannot fail.
            let _ = h.record_n(us, n);
        };
        record(self.latency.entry(kind).or_insert_with(histogram));
        self.sibling_reads += seen.iter().filter(|&&s| s == Seen::Siblings).count() as u64;
        self.misses += seen.iter().filter(|&&s| s == Seen::Nothing).count() as u64;
        if let Some(slot) = self.second_of(at) {
            slot.ops += n;
            record(&mut slot.latency);
        }
    }

    /// Records `count` operations that failed with `error` by `at`.
    pub(crate) fn record_errors(&mut self, error: &str, count: u64, at: Instant) {
        match self.errors.get_mut(error) {
            Some(total) => *total += count,
            None => {
                self.errors.insert(error.to_string(), count);
            }
        }
        if let Some(slot) = self.second_of(at) {
            slot.errors += count;
        }
    }

    /// The timeline's slot for the second `at` falls in (`None` past the
    /// timeline's bound).
    fn second_of(&mut self, at: Instant) -> Option<&mut Second> {
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        if second < TIMELINE_MAX_S {
            while self.timeline.len() <= second {
                self.timeline.push(Second {
                    ops: 0,
                    errors: 0,
                    latency: second_histogram(),
                });
            }
        }
        self.timeline.get_mut(second)
    }

    /// Folds `other` into this one.
    pub(crate) fn merge(&mut self, other: Recorder) {
        for (kind, h) in other.latency {
            let mine = self.latency.entry(kind).or_insert_with(histogram);
            mine.add(&h).expect("histograms with equal bounds merge");
        }
        for (error, count) in other.errors {
            *self.errors.entry(error).or_insert(0) += count;
        }
        self.sibling_reads += other.sibling_reads;
        self.misses += other.misses;
        for (i, second) in other.timeline.into_iter().enumerate() {
            if self.timeline.len() <= i {
                self.timeline.push(Second {
                    ops: 0,
                    errors: 0,
                    latency: second_histogram(),
                });
            }
            let mine = &mut self.timeline[i];
            mine.ops += second.ops;
            mine.errors += second.errors;
            mine.latency
                .add(&second.latency)
                .expect("auto-resizing histograms merge");
        }
    }

    pub(crate) fn ops(&self) -> u64 {
        self.latency.values().map(Histogram::len).sum()
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What a successful operation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A write, or a read of one value.
    Value,
    /// A read of several concurrent values.
    Siblings,
    /// A read of a key with no value.
    Nothing,
}

/// Percentiles of one histogram, in microseconds.
fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 6] {
    [
        ("p50", h.value_at_quantile(0.50)),
        ("p90", h.value_at_quantile(0.90)),
        ("p99", h.value_at_quantile(0.99)),
        ("p99.9", h.value_at_quantile(0.999)),
        ("max", h.max()),
        ("mean", h.mean() as u64),
    ]
}

/// One chart of the SVG: a series over seconds.
struct Panel<'a, DB: DrawingBackend> {
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    unit: &'static str,
    top: f64,
    /// The series' value from `(second, ops, p99_ms)`.
    pick: fn(&(f64, f64, f64)) -> f64,
    color: RGBColor,
}

/// The end-of-run numbers.
pub(crate) struct Summary {
    pub(crate) recorder: Recorder,
    pub(crate) elapsed: Duration,
    /// Client process CPU seconds over the run.
    pub(crate) client_cpu_s: f64,
    pub(crate) threads: usize,
}

impl Summary {
    pub(crate) fn throughput(&self) -> f64 {
        self.recorder.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Share of the client's usable cores it kept busy (1.0 = saturated).
    pub(crate) fn client_utilization(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let usable = self.threads.min(cores) as f64;
        self.client_cpu_s / (self.elapsed.as_secs_f64().max(1e-9) * usable)
    }

    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "{} operations in {:.2} s: {:.0} ops/s; {} errors; {} reads saw siblings; {} reads found nothing\n",
            self.recorder.ops(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.recorder.error_count(),
            self.recorder.sibling_reads,
            self.recorder.misses
        );
        out.push_str("operation            count      p50 us    p90 us    p99 us  p99.9 us    max us\n");
        for (kind, h) in &self.recorder.latency {
            let p = percentiles(h);
            out.push_str(&format!(
                "{:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                kind.name(),
                h.len(),
                p[0].1,
                p[1].1,
                p[2].1,
                p[3].1,
                p[4].1
            ));
        }
        for (error, count) in &self.recorder.errors {
            out.push_str(&format!("error {error}: {count}\n"));
        }
        out.push_str(&format!(
            "client CPU: {:.2} s over {} thread(s), {:.0}% of the cores they could use\n",
            self.client_cpu_s,
            self.threads,
            100.0 * self.client_utilization()
        ));
        if self.client_utilization() > 0.9 {
            out.push_str("warning: the client's CPU was saturated; the load generator may be the bottleneck\n");
        }
        out
    }

    pub(crate) fn json(&self, settings: serde_json::Value) -> serde_json::Value {
        let ops: serde_json::Map<String, serde_json::Value> = self
            .recorder
            .latency
            .iter()
            .map(|(kind, h)| {
                let mut fields = serde_json::Map::new();
                fields.insert("count".into(), h.len().into());
                for (name, us) in percentiles(h) {
                    fields.insert(format!("{name}_us"), us.into());
                }
                (kind.name().to_string(), fields.into())
            })
            .collect();
        let timeline: Vec<serde_json::Value> = self
            .recorder
            .timeline
            .iter()
            .enumerate()
            .map(|(second, s)| {
                serde_json::json!({
                    "second": second,
                    "ops": s.ops,
                    "errors": s.errors,
                    "p99_us": if s.ops > 0 { s.latency.value_at_quantile(0.99) } else { 0 },
                })
            })
            .collect();
        serde_json::json!({
            "settings": settings,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "operations": self.recorder.ops(),
            "throughput_ops_s": self.throughput(),
            "by_operation": ops,
            "errors": self.recorder.errors,
            "sibling_reads": self.recorder.sibling_reads,
            "read_misses": self.recorder.misses,
            "client_cpu_s": self.client_cpu_s,
            "client_utilization": self.client_utilization(),
            "timeline": timeline,
        })
    }

    /// Writes the chart: throughput per second above, p99 per second below.
    pub(crate) fn svg(&self, path: &Path, title: &str) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
        let points: Vec<(f64, f64, f64)> = self
            .recorder
            .timeline
            .iter()
            .enumerate()
            .map(|(s, second)| {
                let p99_ms = if second.ops > 0 {
                    second.latency.value_at_quantile(0.99) as f64 / 1000.0
                } else {
                    0.0
                };
                (s as f64, second.ops as f64, p99_ms)
            })
            .collect();
        let seconds = (points.len() as f64).max(1.0);
        let top_ops = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let top_p99 = points.iter().map(|p| p.2).fold(0.1, f64::max) * 1.1;
        let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let (upper, lower) = root.split_vertically(300);
        let panels = [
            Panel {
                area: &upper,
                caption: format!("{title}: throughput"),
                unit: "ops/s",
                top: top_ops,
                pick: |p| p.1,
                color: BLUE,
            },
            Panel {
                area: &lower,
                caption: "p99 latency".to_string(),
                unit: "ms",
                top: top_p99,
                pick: |p| p.2,
                color: RED,
            },
        ];
        for Panel {
            area,
            caption,
            unit,
            top,
            pick,
            color,
        } in panels
        {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..seconds, 0f64..top)
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(unit)
                .draw()
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.0, pick(p))), &color))
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))
    }
}
