//! A synthetic marketplace: query strings, engagement and neighbour lists with the shape of real
//! search logs, for trying the engine at scale and for benchmarks.
//!
//! - Intents (category + audience/style/colour/brand/material) have Zipf popularity; each intent
//!   has a base query and textual variants (reordered tokens, extra attributes, misspellings,
//!   plurals) sharing its popularity, so most queries are tail queries.
//! - Every search shows a ranked page of products: mostly the intent's relevant products, some
//!   random ones. Impressions fall with position; clicks, adds and purchases rise with relevance.
//! - Neighbour lists score same-intent queries high, related intents (same category) medium and a
//!   few wrong ones low, with self-pairs and duplicate rows as upstream models produce them.
//!
//! Deterministic per seed (ChaCha8, a fixed algorithm).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{InputFormat, OutputFormat};
use crate::error::{Error, Result};
use crate::io::sink;
use crate::io::storage::OutputLocation;

const CATEGORIES: [&str; 48] = [
    "sunglasses",
    "running shoes",
    "yoga mat",
    "phone case",
    "coffee maker",
    "water bottle",
    "backpack",
    "desk lamp",
    "bed sheets",
    "wireless earbuds",
    "laptop stand",
    "rain jacket",
    "hiking boots",
    "throw pillow",
    "cookie sheet",
    "lady fingers",
    "dog bed",
    "cat toy",
    "kitchen knife",
    "cutting board",
    "gaming mouse",
    "mechanical keyboard",
    "usb cable",
    "phone charger",
    "wall clock",
    "picture frame",
    "bath towel",
    "shower curtain",
    "garden hose",
    "tool set",
    "drill bits",
    "paint brush",
    "sketchbook",
    "gel pens",
    "board game",
    "jigsaw puzzle",
    "teddy bear",
    "baby bottle",
    "diaper bag",
    "seat cover",
    "bike helmet",
    "tennis racket",
    "soccer ball",
    "camping tent",
    "sleeping bag",
    "travel pillow",
    "wallet",
    "watch band",
];
const AUDIENCES: [&str; 6] = ["", "women", "men", "kids", "girls", "boys"];
const STYLES: [&str; 10] = [
    "",
    "trendy",
    "vintage",
    "cute",
    "modern",
    "classic",
    "minimalist",
    "premium",
    "cheap",
    "heavy duty",
];
const COLOURS: [&str; 12] = [
    "", "black", "white", "red", "blue", "green", "pink", "grey", "brown", "gold", "silver",
    "purple",
];
const BRANDS: [&str; 30] = [
    "", "acme", "zentro", "lumo", "brava", "kovi", "nordik", "pixa", "sunvale", "terra", "vexo",
    "ollie", "quanta", "rivo", "solen", "tavi", "umbra", "vanta", "wix", "yarra", "zuma", "aero",
    "bolt", "cora", "dune", "echo", "fable", "gala", "halo", "iris",
];
const MATERIALS: [&str; 10] = [
    "", "leather", "cotton", "silicone", "bamboo", "steel", "wooden", "plastic", "glass", "wool",
];
const EXTRAS: [&str; 12] = [
    "for gift",
    "2 pack",
    "xl",
    "small",
    "large",
    "set",
    "for travel",
    "bulk",
    "new",
    "sale",
    "prime",
    "with case",
];

/// Products per category catalogue, and relevant products per intent.
const CATALOGUE: u64 = 20_000;
const INTENT_PRODUCTS: usize = 48;
const BATCH_ROWS: usize = 64 * 1024;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub queries: usize,
    pub seed: u64,
    pub format: InputFormat,
    /// Also write `engagement_later.<ext>`: a second period of the same traffic and relevance with
    /// independent randomness, as held-out outcomes for `evaluate features` and labels for export.
    pub later_period: bool,
    /// One bestseller product (`BESTSELLER-0`, a gift card say) bought once from this many
    /// distinct queries spread evenly over all of them (0: none): the hot product that makes
    /// co-purchase mining quadratic without sampling (`mine pairs --hot-cap`). Draws no random
    /// numbers, so the rest of the data is the same with or without it.
    pub bestseller_queries: usize,
}

/// Where it went and how much.
#[derive(Debug, Clone)]
pub struct SynthOutput {
    pub engagement: String,
    pub neighbours: String,
    pub queries: usize,
    pub engagement_rows: u64,
    pub neighbour_rows: u64,
    /// The later period's engagement file and row count, when asked for.
    pub later: Option<(String, u64)>,
    /// Queries by search volume: head (>= 1000 searches), torso (20 to 999), tail (< 20).
    pub head_queries: u64,
    pub torso_queries: u64,
    pub tail_queries: u64,
}

/// One generated query: its text, its intent and its expected number of searches.
struct Query {
    text: String,
    intent: usize,
    traffic: f64,
}

/// The intents' query ranges, for picking neighbours.
struct Catalogue {
    queries: Vec<Query>,
    /// `intent_queries[i]` = range of query indices of intent i (base query first).
    intent_queries: Vec<std::ops::Range<usize>>,
}

fn intent_tokens(intent: usize) -> Vec<&'static str> {
    let category = CATEGORIES[intent % CATEGORIES.len()];
    let mut r = intent / CATEGORIES.len();
    let mut pick = |options: &[&'static str]| {
        let o = options[r % options.len()];
        r /= options.len();
        o
    };
    let audience = pick(&AUDIENCES);
    let style = pick(&STYLES);
    let colour = pick(&COLOURS);
    let brand = pick(&BRANDS);
    let material = pick(&MATERIALS);
    [brand, audience, style, colour, material, category]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect()
}

/// The j-th textual variant of an intent's base query.
fn variant(tokens: &[&str], intent: usize, j: usize, rng: &mut ChaCha8Rng) -> String {
    let mut words: Vec<String> = tokens.join(" ").split(' ').map(str::to_string).collect();
    let n = words.len();
    match j % 4 {
        0 if n > 1 => words.rotate_left(1 + (j / 4) % (n - 1)),
        1 | 0 => words.push(EXTRAS[(intent + j) % EXTRAS.len()].to_string()),
        2 => {
            // misspelling: drop or double one letter of a long word
            let w = rng.random_range(0..words.len());
            let chars: Vec<char> = words[w].chars().collect();
            if chars.len() > 3 {
                let at = rng.random_range(1..chars.len() - 1);
                let mut out: String = chars[..at].iter().collect();
                if rng.random_bool(0.5) {
                    out.push(chars[at]);
                }
                out.extend(&chars[at + 1..]);
                if rng.random_bool(0.5) {
                    out.push(chars[chars.len() - 1]);
                }
                words[w] = out;
            } else {
                words.push(EXTRAS[(intent + j) % EXTRAS.len()].to_string());
            }
        }
        _ => {
            let last = words.len() - 1;
            if words[last].ends_with('s') {
                words[last].pop();
            } else {
                words[last].push('s');
            }
            if j >= 4 {
                words.push(EXTRAS[(intent * 7 + j) % EXTRAS.len()].to_string());
            }
        }
    }
    words.join(" ")
}

fn build_catalogue(spec: &SynthSpec, rng: &mut ChaCha8Rng) -> Catalogue {
    let mut queries = Vec::with_capacity(spec.queries);
    let mut intent_queries = Vec::new();
    let mut seen: HashSet<String> = HashSet::with_capacity(spec.queries);
    let mut intent = 0;
    while queries.len() < spec.queries {
        let tokens = intent_tokens(intent);
        // Zipf popularity of intents; variants share it, the base query gets the largest share.
        // traffic scales with the marketplace, so every size has the same head/torso/tail shape
        let popularity = 2.5 * spec.queries as f64 / (intent as f64 + 1.0).powf(1.05);
        let n_variants = 1 + (intent * 2_654_435_761 % 7);
        let first = queries.len();
        let base = tokens.join(" ");
        let mut candidates = vec![base];
        for j in 0..n_variants * 2 {
            if candidates.len() > n_variants {
                break;
            }
            candidates.push(variant(&tokens, intent, j, rng));
        }
        for (v, text) in candidates.into_iter().enumerate() {
            if queries.len() == spec.queries || !seen.insert(text.clone()) {
                continue;
            }
            let share = if v == 0 {
                0.6
            } else {
                0.4 * 0.5f64.powi(v as i32)
            };
            queries.push(Query {
                text,
                intent,
                traffic: popularity * share,
            });
        }
        intent_queries.push(first..queries.len());
        intent += 1;
    }
    Catalogue {
        queries,
        intent_queries,
    }
}

fn product_id(category: usize, index: u64) -> String {
    format!("B{:09}", category as u64 * 1_000_000 + index)
}

/// The intent's k-th relevant product index (a fixed pseudo-random pick from its category).
fn intent_product(intent: usize, k: usize) -> u64 {
    let mut x = (intent as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (k as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % CATALOGUE
}

/// One table's batches, made on a blocking thread and handed to the sink as they come
/// ([`write_table`]).
struct TableWriter {
    schema: SchemaRef,
    batches: mpsc::Sender<datafusion::error::Result<RecordBatch>>,
    rows: u64,
}

impl TableWriter {
    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.rows += batch.num_rows() as u64;
        // a closed channel: the sink stopped, and says why
        self.batches
            .blocking_send(Ok(batch))
            .map_err(|_| Error::Io(std::io::Error::other("the table's writer stopped")))
    }
}

/// Writes one table to `uri` (a local path or an object-store URL) with the engine's sink:
/// staged and renamed into place, so the file is complete or absent. `make` generates the rows
/// into a [`TableWriter`] on a blocking thread while the sink encodes and uploads them.
async fn write_table<T: Send + 'static>(
    runtime: &RuntimeEnv,
    uri: &str,
    schema: SchemaRef,
    format: InputFormat,
    make: impl FnOnce(&mut TableWriter) -> Result<T> + Send + 'static,
) -> Result<(T, u64)> {
    let location = OutputLocation::resolve(runtime, uri)?;
    let (sender, receiver) = mpsc::channel(2);
    let mut writer = TableWriter {
        schema: Arc::clone(&schema),
        batches: sender,
        rows: 0,
    };
    let producer =
        tokio::task::spawn_blocking(move || {
            let made = make(&mut writer);
            if let Err(e) = &made {
                // the stream must fail rather than end: an early end would commit a partial file
                let _ = writer.batches.blocking_send(Err(
                    datafusion::error::DataFusionError::Execution(e.to_string()),
                ));
            }
            made.map(|made| (made, writer.rows))
        });
    let batches = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|batch| (batch, receiver))
    });
    let format = match format {
        InputFormat::Parquet => OutputFormat::Parquet,
        InputFormat::Csv => OutputFormat::Csv,
        InputFormat::Json => OutputFormat::Json,
    };
    let written = sink::write_stream_atomic(
        Box::pin(RecordBatchStreamAdapter::new(schema, batches)),
        &location,
        format,
        &CancellationToken::new(),
        |_| {},
    )
    .await;
    let made = producer
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    // the generator's error is the cause when both failed
    let made = made?;
    written?;
    Ok(made)
}

struct EngagementBuffers {
    query: StringBuilder,
    product: StringBuilder,
    counts: [Int64Builder; 4],
    len: usize,
}

impl EngagementBuffers {
    fn new() -> Self {
        EngagementBuffers {
            query: StringBuilder::new(),
            product: StringBuilder::new(),
            counts: std::array::from_fn(|_| Int64Builder::with_capacity(BATCH_ROWS)),
            len: 0,
        }
    }

    fn push(&mut self, query: &str, product: &str, counts: [i64; 4]) {
        self.query.append_value(query);
        self.product.append_value(product);
        for (b, c) in self.counts.iter_mut().zip(counts) {
            b.append_value(c);
        }
        self.len += 1;
    }

    fn flush(&mut self, out: &mut TableWriter) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.query.finish()),
            Arc::new(self.product.finish()),
        ];
        columns.extend(
            self.counts
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        self.len = 0;
        out.write(columns)
    }
}

/// Engagement of one query: a page of products per search, impressions by position.
/// Returns the number of searches of the query.
fn engagement_of(q: &Query, rng: &mut ChaCha8Rng, out: &mut Vec<(String, [i64; 4])>) -> u64 {
    out.clear();
    // A query is in the logs because it was searched at least once.
    let searches = 1 + if q.traffic > 50.0 {
        q.traffic.round() as u64
    } else {
        Poisson::new(q.traffic.max(1e-9)).map_or(0.0, |p| p.sample(rng)) as u64
    };
    let category = q.intent % CATEGORIES.len();
    let shown = (15.0 + 4.0 * (searches as f64).ln()).min(60.0) as usize;
    let mut used = HashSet::with_capacity(shown);
    let mut next_relevant = 0;
    for pos in 1..=shown {
        let (index, relevance) = if rng.random_bool(0.85) && next_relevant < INTENT_PRODUCTS {
            next_relevant += 1;
            (
                intent_product(q.intent, next_relevant - 1),
                0.9 * 0.93f64.powi(next_relevant as i32 - 1),
            )
        } else {
            (rng.random_range(0..CATALOGUE), 0.05)
        };
        if !used.insert(index) {
            continue;
        }
        let view = 0.96f64.powi(pos as i32 - 1);
        let impressions = Binomial::new(searches, view).map_or(0, |b| b.sample(rng));
        if impressions == 0 {
            continue;
        }
        let ctr = 0.35 * relevance / (1.0 + 0.15 * (pos as f64 - 1.0));
        let clicks = Binomial::new(impressions, ctr).map_or(0, |b| b.sample(rng));
        let adds = Binomial::new(clicks, 0.35).map_or(0, |b| b.sample(rng));
        let purchases = Binomial::new(adds, 0.55).map_or(0, |b| b.sample(rng));
        out.push((
            product_id(category, index),
            [
                impressions as i64,
                clicks as i64,
                adds as i64,
                purchases as i64,
            ],
        ));
    }
    searches
}

/// Neighbour list of one query: same intent high, related intents medium, a few wrong ones low.
fn neighbours_of(qi: usize, cat: &Catalogue, rng: &mut ChaCha8Rng, out: &mut Vec<(usize, f64)>) {
    out.clear();
    let q = &cat.queries[qi];
    let n_intents = cat.intent_queries.len();
    for other in cat.intent_queries[q.intent]
        .clone()
        .filter(|&o| o != qi)
        .take(5)
    {
        out.push((other, rng.random_range(0.78..0.99)));
    }
    let per_category = n_intents.div_ceil(CATEGORIES.len()).max(1);
    let category = q.intent % CATEGORIES.len();
    for _ in 0..9 {
        // related intents of the same category, biased towards popular ones
        let u: f64 = rng.random();
        let related = category + CATEGORIES.len() * ((u * u * per_category as f64) as usize);
        if related < n_intents && related != q.intent {
            let other = cat.intent_queries[related].start;
            if !out.iter().any(|&(o, _)| o == other) {
                out.push((other, rng.random_range(0.45..0.8)));
            }
        }
    }
    for _ in 0..2 {
        out.push((
            rng.random_range(0..cat.queries.len()),
            rng.random_range(0.05..0.45),
        ));
    }
    if rng.random_bool(0.05) {
        out.push((qi, 1.0));
    }
    if rng.random_bool(0.05) && !out.is_empty() {
        let (dup, _) = out[rng.random_range(0..out.len())];
        out.push((dup, rng.random_range(0.05..0.99)));
    }
}

/// The product id of `SynthSpec::bestseller_queries`.
pub const BESTSELLER: &str = "BESTSELLER-0";

/// Seed offset of the later period's random stream.
const LATER_PERIOD_STREAM: u64 = 0x1A7E_0000_5EED;

/// Writes one period of engagement for every query; returns its rows and the number of head,
/// torso and tail queries (by searches in the period).
fn engagement_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("product_id", DataType::Utf8, false),
        Field::new("impressions", DataType::Int64, false),
        Field::new("clicks", DataType::Int64, false),
        Field::new("adds", DataType::Int64, false),
        Field::new("purchases", DataType::Int64, false),
    ]))
}

/// Generates the engagement rows of every query into `writer`; returns the queries by segment.
fn make_engagement(
    catalogue: &Catalogue,
    rng: &mut ChaCha8Rng,
    writer: &mut TableWriter,
    bestseller_queries: usize,
) -> Result<[u64; 3]> {
    let mut buffers = EngagementBuffers::new();
    let mut rows = Vec::new();
    let mut segments = [0u64; 3];
    let stride = catalogue
        .queries
        .len()
        .checked_div(bestseller_queries)
        .unwrap_or(0)
        .max(1);
    for (i, q) in catalogue.queries.iter().enumerate() {
        match engagement_of(q, rng, &mut rows) {
            s if s >= 1000 => segments[0] += 1,
            s if s >= 20 => segments[1] += 1,
            _ => segments[2] += 1,
        }
        for (product, counts) in &rows {
            buffers.push(&q.text, product, *counts);
        }
        if bestseller_queries > 0 && i % stride == 0 && i / stride < bestseller_queries {
            buffers.push(&q.text, BESTSELLER, [1, 1, 1, 1]);
        }
        if buffers.len >= BATCH_ROWS {
            buffers.flush(writer)?;
        }
    }
    buffers.flush(writer)?;
    Ok(segments)
}

/// Generates the neighbour lists of every query into `writer`.
fn make_neighbours(
    catalogue: &Catalogue,
    rng: &mut ChaCha8Rng,
    writer: &mut TableWriter,
) -> Result<()> {
    let (mut query, mut neighbour, mut score) = (
        StringBuilder::new(),
        StringBuilder::new(),
        Float64Builder::new(),
    );
    let mut pending = 0;
    let mut list = Vec::new();
    for (qi, q) in catalogue.queries.iter().enumerate() {
        neighbours_of(qi, catalogue, rng, &mut list);
        for &(other, s) in &list {
            query.append_value(&q.text);
            neighbour.append_value(&catalogue.queries[other].text);
            // three decimals, like a model score written out by a reranker
            score.append_value((s * 1000.0).round() / 1000.0);
            pending += 1;
        }
        if pending >= BATCH_ROWS || qi + 1 == catalogue.queries.len() {
            writer.write(vec![
                Arc::new(query.finish()),
                Arc::new(neighbour.finish()),
                Arc::new(score.finish()),
            ])?;
            pending = 0;
        }
    }
    Ok(())
}

/// Generates the marketplace into the folder `out` (a local path, created if missing, or an
/// object-store URL), each file written by the engine's sink, complete or absent.
pub async fn generate(spec: &SynthSpec, out: &str, runtime: &RuntimeEnv) -> Result<SynthOutput> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let catalogue = Arc::new(build_catalogue(spec, &mut rng));
    let ext = match spec.format {
        InputFormat::Parquet => "parquet",
        InputFormat::Csv => "csv",
        InputFormat::Json => "ndjson",
    };
    let file = |name: &str| format!("{}/{name}.{ext}", out.trim_end_matches('/'));
    let bestsellers = spec.bestseller_queries;

    let engagement = file("engagement");
    let ((rng, [head_queries, torso_queries, tail_queries]), engagement_rows) =
        write_table(runtime, &engagement, engagement_schema(), spec.format, {
            let catalogue = Arc::clone(&catalogue);
            move |writer| {
                let segments = make_engagement(&catalogue, &mut rng, writer, bestsellers)?;
                Ok((rng, segments))
            }
        })
        .await?;

    let neighbours = file("neighbours");
    let neighbour_schema = Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("neighbour", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let ((), neighbour_rows) = write_table(runtime, &neighbours, neighbour_schema, spec.format, {
        let catalogue = Arc::clone(&catalogue);
        let mut rng = rng;
        move |writer| make_neighbours(&catalogue, &mut rng, writer)
    })
    .await?;

    let later = if spec.later_period {
        // its own stream, so the first period is the same with or without it
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ LATER_PERIOD_STREAM);
        let path = file("engagement_later");
        let (_, rows) = write_table(runtime, &path, engagement_schema(), spec.format, {
            let catalogue = Arc::clone(&catalogue);
            move |writer| make_engagement(&catalogue, &mut rng, writer, bestsellers)
        })
        .await?;
        Some((path, rows))
    } else {
        None
    };

    Ok(SynthOutput {
        engagement,
        neighbours,
        queries: catalogue.queries.len(),
        engagement_rows,
        neighbour_rows,
        later,
        head_queries,
        torso_queries,
        tail_queries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_are_distinct_and_head_intents_are_short() {
        assert_eq!(intent_tokens(0), vec!["sunglasses"]);
        let texts: HashSet<String> = (0..100_000).map(|i| intent_tokens(i).join(" ")).collect();
        assert_eq!(texts.len(), 100_000);
    }

    #[test]
    fn queries_are_unique_and_deterministic() {
        let spec = SynthSpec {
            queries: 5_000,
            seed: 7,
            format: InputFormat::Parquet,
            later_period: false,
            bestseller_queries: 0,
        };
        let a = build_catalogue(&spec, &mut ChaCha8Rng::seed_from_u64(7));
        let b = build_catalogue(&spec, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a.queries.len(), 5_000);
        let texts: HashSet<&str> = a.queries.iter().map(|q| q.text.as_str()).collect();
        assert_eq!(texts.len(), 5_000);
        assert!(
            a.queries
                .iter()
                .zip(&b.queries)
                .all(|(x, y)| x.text == y.text)
        );
    }
}
