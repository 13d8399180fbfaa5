//! `scenario compare`: two `portico` binaries (before and after a change) in the same run, on
//! the README's defaults as `scenario shipped` starts them (`portico serve` in a directory of its
//! own, nothing from the caller's environment, SQLite under `./data`, rate limits raised) plus
//! `ADMIN_API_KEY`. Each round starts one binary at a time, publishes one article through the
//! admin API, and measures closed-loop `GET /healthz` and the cached
//! `GET /api/v1/content/{slug}`; the order alternates between rounds so drift on the machine
//! falls on both. Each row reports the median throughput of each binary over the rounds and the
//! ratio after/before against `--min-ratio`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::{
    print, reqwest_free_post, run,
    shipped::{get, Portico, RAISED_LIMITS},
    Load, Report, BENCH_ADMIN_KEY,
};

const ARTICLE: &str = r#"{"slug":"benchmark-article","title":"Benchmark","body":"A published article of a realistic size for a landing page.","tags":["bench"],"status":"published"}"#;

/// Options of `scenario compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The `portico` binary before the change.
    #[arg(long)]
    before: PathBuf,
    /// The `portico` binary after the change.
    #[arg(long)]
    after: PathBuf,
    /// Connections, each sending back to back.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds per row, binary and round.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured warm-up seconds before each row.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds; each runs both binaries, one at a time, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Lowest acceptable ratio after/before of the median throughputs.
    #[arg(long, default_value_t = 0.95)]
    min_ratio: f64,
    /// Tiny durations and one round: checks the tool and prints the ratios, never fails on them.
    #[arg(long)]
    smoke: bool,
}

/// The rows, in order: name and path.
const ROWS: [(&str, &str); 2] = [
    ("GET /healthz", "/healthz"),
    (
        "GET /api/v1/content/{slug} (cached)",
        "/api/v1/content/benchmark-article",
    ),
];

/// Both rows' reports of one binary in one round.
async fn measure_binary(
    bin: &Path,
    label: &str,
    round: usize,
    load: &Load,
) -> anyhow::Result<Vec<Report>> {
    let mut extra: Vec<(&str, String)> = RAISED_LIMITS
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    extra.push(("ADMIN_API_KEY", BENCH_ADMIN_KEY.to_owned()));
    let portico = Portico::start(bin, &extra)
        .await
        .map_err(|e| e.context(format!("starting the {label} binary")))?;
    // Whatever happens below, the server is stopped before returning.
    let result = rows(&portico, label, round, load).await;
    portico.stop().await;
    result
}

async fn rows(
    portico: &Portico,
    label: &str,
    round: usize,
    load: &Load,
) -> anyhow::Result<Vec<Report>> {
    let edge = portico.edge;
    let created = reqwest_free_post(edge, "/api/v1/admin/content", ARTICLE).await?;
    anyhow::ensure!(
        created == 201,
        "{label}: creating the article answered {created}"
    );
    let mut reports = Vec::new();
    for (name, path) in ROWS {
        let report = run(
            &format!("{label} {name}, c{}, round {round}", load.concurrency),
            get(edge, path),
            load,
        )
        .await?;
        print(&report)?;
        reports.push(report);
    }
    Ok(reports)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `scenario compare`.
pub async fn scenario(args: CompareArgs) -> anyhow::Result<()> {
    let (rounds, duration, warmup) = if args.smoke {
        (1, 0.5, 0.2)
    } else {
        (args.rounds.max(1), args.duration, args.warmup)
    };
    let load = Load {
        concurrency: args.concurrency.max(1),
        rate: None,
        duration,
        warmup,
    };
    for (label, bin) in [("before", &args.before), ("after", &args.after)] {
        anyhow::ensure!(
            bin.is_file(),
            "--{label} {}: no such file (build it first)",
            bin.display()
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "compare",
            "before": args.before.display().to_string(),
            "after": args.after.display().to_string(),
            "configuration": "README defaults (portico serve; SQLite under ./data in a temp dir; in-memory limits and cache) plus only these variables",
            "added": RAISED_LIMITS.iter().map(|(k, v)| format!("{k}={v}")).chain(["ADMIN_API_KEY=<32 chars>".to_owned()]).collect::<Vec<_>>(),
            "concurrency": load.concurrency,
            "duration_s": duration,
            "warmup_s": warmup,
            "rounds": rounds,
            "cores": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        })
    );
    // results[binary][row] = one report per round; binary 0 = before, 1 = after.
    let mut results: [Vec<Vec<Report>>; 2] = [
        ROWS.iter().map(|_| Vec::new()).collect(),
        ROWS.iter().map(|_| Vec::new()).collect(),
    ];
    for round in 1..=rounds {
        // Alternate the order (before first in odd rounds, after first in even ones).
        let order: [usize; 2] = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for which in order {
            let (label, bin) = if which == 0 {
                ("before", &args.before)
            } else {
                ("after", &args.after)
            };
            let reports = measure_binary(bin, label, round, &load).await?;
            for (row, report) in reports.into_iter().enumerate() {
                results[which][row].push(report);
            }
        }
    }

    let mut errors = 0;
    let mut failed = Vec::new();
    for (row, (name, _)) in ROWS.iter().enumerate() {
        let stat = |which: usize, f: fn(&Report) -> f64| {
            median(&mut results[which][row].iter().map(f).collect::<Vec<_>>())
        };
        let before = stat(0, |r| r.throughput_rps);
        let after = stat(1, |r| r.throughput_rps);
        let ratio = after / before.max(f64::MIN_POSITIVE);
        let per_round: Vec<f64> = results[0][row]
            .iter()
            .zip(&results[1][row])
            .map(|(b, a)| round3(a.throughput_rps / b.throughput_rps.max(f64::MIN_POSITIVE)))
            .collect();
        errors += results
            .iter()
            .flat_map(|binary| binary[row].iter())
            .map(|r| r.errors)
            .sum::<u64>();
        let met = ratio >= args.min_ratio;
        if !met {
            failed.push(*name);
        }
        println!(
            "{}",
            serde_json::json!({
                "row": format!("{name}, c{}: after/before (median throughput over {rounds} rounds)", load.concurrency),
                "before_rps": before.round(),
                "after_rps": after.round(),
                "ratio": round3(ratio),
                "per_round_ratios": per_round,
                "before_p50_ms": round3(stat(0, |r| r.p50_ms)),
                "after_p50_ms": round3(stat(1, |r| r.p50_ms)),
                "before_p99_ms": round3(stat(0, |r| r.p99_ms)),
                "after_p99_ms": round3(stat(1, |r| r.p99_ms)),
                "target": format!(">= {}", args.min_ratio),
                "met": met,
            })
        );
    }
    let verdict = if args.smoke {
        "smoke (ratios not judged)"
    } else if failed.is_empty() {
        "pass"
    } else {
        "fail"
    };
    println!(
        "{}",
        serde_json::json!({
            "scenario": "compare",
            "smoke": args.smoke,
            "min_ratio": args.min_ratio,
            "verdict": verdict,
            "below_min_ratio": failed,
            "errors": errors,
        })
    );
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    if !args.smoke {
        anyhow::ensure!(
            failed.is_empty(),
            "after/before below {}: {}",
            args.min_ratio,
            failed.join(", ")
        );
    }
    Ok(())
}
