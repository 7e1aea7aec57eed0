//! `q2q-prior sql`: an interactive SQL shell (or a script runner) over the job's inputs, its
//! stage views and the project's UDFs, shaped like datafusion-cli.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;

use super::JobArgs;
use crate::config::OutputFormat;
use crate::error::{Error, Result};
use crate::io::sink;
use crate::io::storage::OutputLocation;
use crate::shell::print::DisplayFormat;
use crate::shell::statements::{self, Item, Splitter};
use crate::shell::{Flow, Outcome, Shell};

#[derive(Debug, Args)]
#[command(
    long_about = "Open a SQL shell over the job's tables: the inputs `engagement` and \
    `neighbours`, every pipeline stage as a view (`history`, `neighbour_sets`, `prior`, `features`) \
    built from the same sql/ files and parameters as `run`, and the UDFs (q2q_history, \
    q2q_neighbour_weight, q2q_weight_total, q2q_prior, q2q_confidence, q2q_alpha, q2q_blend, \
    normalize_query; SHOW FUNCTIONS lists them). Nothing is computed until a statement reads it.\n\n\
    Without -c/-f it reads statements from stdin: a REPL on a terminal (history, multi-line \
    statements ending in ';', Ctrl-C cancels the running statement, Ctrl-D exits), a script when \
    piped (every statement runs; the exit code is 2 if any failed). With -c/-f the first error stops \
    and sets the exit code. \\? lists the meta-commands. Results go to stdout, status lines to stderr."
)]
pub struct SqlArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Run this SQL (one or more statements) and exit; repeatable, after any -f files.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,
    /// Run the statements of this file and exit; repeatable.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Result format [default: table when stdout is a terminal, csv otherwise].
    #[arg(long, value_enum)]
    pub format: Option<DisplayFormat>,
    /// Print at most N rows of a result (the rest is counted); 0 = all [default: 40 for table, all otherwise].
    #[arg(long, value_name = "N")]
    pub maxrows: Option<usize>,
    /// Write the last statement's result to this file or URL instead of stdout (Parquet, CSV or
    /// NDJSON by extension), atomically.
    #[arg(short = 'o', long = "output", value_name = "URI")]
    pub output: Option<String>,
    /// No status lines (row counts, timings) on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Where the history of the REPL is kept.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("Q2Q_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".q2q_prior_history"))
}

pub async fn run(args: SqlArgs) -> Result<()> {
    let config = args.job.load()?;
    let scripted = !args.commands.is_empty() || !args.files.is_empty();
    let interactive = !scripted && std::io::stdin().is_terminal();
    if args.output.is_some() && interactive {
        return Err(Error::config(
            "-o/--output writes the last statement's result: use it with -c, -f or piped stdin",
        ));
    }
    // read the script before opening the inputs, so a missing file fails first
    let mut items = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::config(format!("cannot read SQL file {}: {e}", file.display())))?;
        items.extend(statements::split(&text));
    }
    for command in &args.commands {
        items.extend(statements::split(command));
    }

    let mut shell = Shell::open(config).await?;
    shell.format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        DisplayFormat::Table
    } else {
        DisplayFormat::Csv
    });
    shell.maxrows = match args.maxrows {
        Some(0) => None,
        Some(n) => Some(n),
        None if shell.format == DisplayFormat::Table => Some(40),
        None => None,
    };
    let status = Status {
        quiet: args.quiet,
        timings: interactive || std::io::stderr().is_terminal(),
    };

    if interactive {
        return repl(&mut shell, status).await;
    }
    if !scripted && args.output.is_none() {
        return run_piped(&mut shell, status).await;
    }
    if !scripted {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        items = statements::split(&text);
    }
    if let Some(output) = &args.output {
        let Some(Item::Sql(last)) = items.pop() else {
            return Err(Error::config(
                "-o/--output needs the last statement to be a SQL query",
            ));
        };
        run_items(&mut shell, items, status, scripted).await?;
        return write_output(&shell, &last, output, status).await;
    }
    run_items(&mut shell, items, status, scripted).await
}

/// Runs items in order. With `stop_on_error` (-c/-f) the first error is returned; otherwise
/// (piped stdin) every item runs and a summary error says how many failed.
async fn run_items(
    shell: &mut Shell,
    items: Vec<Item>,
    status: Status,
    stop_on_error: bool,
) -> Result<()> {
    let mut failed = 0usize;
    for item in items {
        match run_item(shell, &item, status).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => break,
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) if stop_on_error => return Err(e),
            Err(e) => {
                report_error(&e);
                failed += 1;
            }
        }
    }
    summary(failed)
}

/// Piped stdin: each statement runs as soon as its `;` arrives; every statement runs and the exit
/// code says whether any failed.
async fn run_piped(shell: &mut Shell, status: Status) -> Result<()> {
    let mut splitter = Splitter::default();
    let mut failed = 0usize;
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = tokio::task::block_in_place(|| lines.next()).transpose()?;
        let items = match &line {
            Some(line) => splitter.push_line(line),
            None => splitter.finish().into_iter().collect(),
        };
        for item in items {
            match run_item(shell, &item, status).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return summary(failed),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => {
                    report_error(&e);
                    failed += 1;
                }
            }
        }
        if line.is_none() {
            return summary(failed);
        }
    }
}

fn summary(failed: usize) -> Result<()> {
    if failed > 0 {
        return Err(Error::Statement(format!("{failed} statement(s) failed")));
    }
    Ok(())
}

/// Runs one item; Ctrl-C (or SIGTERM) cancels it with [`Error::Interrupted`].
async fn run_item(shell: &mut Shell, item: &Item, status: Status) -> Result<Flow> {
    let mut out = std::io::stdout().lock();
    let work = async {
        match item {
            Item::Meta(line) => shell.run_meta(line, &mut out).await,
            Item::Sql(sql) => {
                let outcome = shell.run_sql(sql, &mut out).await?;
                out.flush()?;
                status.report(&outcome);
                Ok(Flow::Continue)
            }
        }
    };
    tokio::select! {
        biased;
        _ = super::signal::shutdown_signal() => Err(Error::Interrupted),
        result = work => result,
    }
}

fn report_error(e: &Error) {
    eprintln!("Error: {}", crate::redact::text(&e.to_string()));
    if let Some(hint) = e.hint() {
        eprintln!("hint: {hint}");
    }
}

/// The interactive loop: errors are printed and the shell goes on.
async fn repl(shell: &mut Shell, status: Status) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Error::config(format!("cannot start the line editor: {e}")))?;
    let history = history_path();
    if let Some(path) = &history {
        // a missing history file is normal on first use
        let _ = editor.load_history(path);
    }
    eprintln!(
        "q2q-prior sql {} — {}. \\? for help, \\q or Ctrl-D to quit.",
        env!("CARGO_PKG_VERSION"),
        shell.banner()
    );
    // Ctrl-C is a key while the line editor is in raw mode, and a signal otherwise (a terminal it
    // cannot drive, e.g. TERM=dumb, or while a statement runs). Counting the signals from here on
    // keeps one from ending the shell and lets the prompt tell that one arrived while reading.
    // The handler is installed here, before the first readline: the line editor swaps in its own
    // SIGINT handler while it reads and puts back whatever was there before.
    let interrupts = Arc::new(AtomicU64::new(0));
    #[cfg(unix)]
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let counter = tokio::spawn({
        let interrupts = Arc::clone(&interrupts);
        async move {
            #[cfg(unix)]
            while sigint.recv().await.is_some() {
                interrupts.fetch_add(1, Ordering::SeqCst);
            }
            #[cfg(not(unix))]
            while tokio::signal::ctrl_c().await.is_ok() {
                interrupts.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let result = read_eval_print(shell, status, &mut editor, &interrupts).await;
    counter.abort();
    save_history(&mut editor, history.as_ref());
    result
}

async fn read_eval_print(
    shell: &mut Shell,
    status: Status,
    editor: &mut rustyline::DefaultEditor,
    interrupts: &AtomicU64,
) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut splitter = Splitter::default();
    let mut entry = String::new();
    loop {
        let prompt = if splitter.is_empty() {
            "q2q> "
        } else {
            "  -> "
        };
        let before = interrupts.load(Ordering::SeqCst);
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        if interrupts.load(Ordering::SeqCst) != before {
            // Ctrl-C (as a signal) while reading: what was typed before it is dropped
            splitter.clear();
            entry.clear();
        }
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                // Ctrl-C (as a key) at the prompt drops the statement being typed
                splitter.clear();
                entry.clear();
                continue;
            }
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(Error::config(format!("cannot read input: {e}"))),
        };
        if !entry.is_empty() {
            entry.push('\n');
        }
        entry.push_str(&line);
        let items = splitter.push_line(&line);
        if !items.is_empty() && splitter.is_empty() {
            let _ = editor.add_history_entry(entry.trim());
            entry.clear();
        }
        for item in items {
            match run_item(shell, &item, status).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return Ok(()),
                Err(Error::Interrupted) => eprintln!("cancelled"),
                Err(e) => report_error(&e),
            }
        }
    }
}

fn save_history(editor: &mut rustyline::DefaultEditor, path: Option<&PathBuf>) {
    if let Some(path) = path
        && let Err(e) = editor.save_history(path)
    {
        tracing::warn!("could not save the history to {}: {e}", path.display());
    }
}

/// `-o`: the last statement's result written atomically to a file or object-store URL.
async fn write_output(shell: &Shell, sql: &str, output: &str, status: Status) -> Result<()> {
    let Some(format) = OutputFormat::from_extension(output) else {
        return Err(Error::config(format!(
            "-o {output}: the extension picks the format; use .parquet, .csv, .json, .ndjson or .jsonl"
        )));
    };
    let location = OutputLocation::resolve(shell.context().runtime_env().as_ref(), output)?;
    let df = shell.plan(sql).await?;
    if df.schema().fields().is_empty() {
        return Err(Error::Statement(format!(
            "-o {output}: the last statement returns no rows to write (it is DDL or SET): end with a query"
        )));
    }
    let stop = super::signal::StopOnSignal::new("stopping: cleaning up the staging output");
    let written = sink::write_atomic(df, &location, format, &stop.token, |_| {}).await?;
    if !status.quiet {
        eprintln!(
            "wrote {} row(s) ({} bytes) to {}",
            written.rows,
            written.bytes,
            crate::redact::text(output)
        );
    }
    Ok(())
}

/// Status lines on stderr.
#[derive(Debug, Clone, Copy)]
struct Status {
    quiet: bool,
    /// Row counts and timings after every statement (on a terminal).
    timings: bool,
}

impl Status {
    fn report(&self, outcome: &Outcome) {
        if self.quiet {
            return;
        }
        let printed = outcome.printed;
        if printed.shown < printed.rows {
            eprintln!(
                "{} row(s), {} shown (--maxrows, \\format csv or -o for all)",
                printed.rows, printed.shown
            );
        } else if self.timings && !outcome.silent {
            eprintln!(
                "{} row(s) in {:.3}s",
                printed.rows,
                outcome.elapsed.as_secs_f64()
            );
        }
    }
}
