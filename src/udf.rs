//! The project's scalar UDFs, vectorised over Arrow arrays.
//!
//! `features.sql` calls them, and any session can, so a feature can be recomputed by hand with the
//! same bits. Both call [`crate::formula`], the single definition. They are registered by
//! [`crate::session::register_functions`], which every session goes through.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use datafusion::logical_expr::{DocSection, Documentation};

use crate::config::{Blend, PriorWeighting};
use crate::{formula, normalize};

/// Where `SHOW FUNCTIONS` and the docs file the project's UDFs.
const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "q2q-prior",
    description: Some("The Q2Q prior's formulas (Q2Q paper, section 4.5) and query normalization"),
};

/// Documentation of a UDF, built once.
fn doc(
    cell: &'static OnceLock<Documentation>,
    description: &str,
    syntax: &str,
    arguments: &[(&str, &str)],
) -> &'static Documentation {
    cell.get_or_init(|| {
        arguments
            .iter()
            .fold(
                Documentation::builder(DOC_SECTION, description, syntax),
                |b, (name, text)| b.with_argument(*name, *text),
            )
            .build()
    })
}

/// Every UDF the engine defines, in registration order.
pub fn all() -> Vec<ScalarUDF> {
    let mut udfs: Vec<ScalarUDF> = FORMULAS.iter().map(|f| ScalarUDF::from(f.udf())).collect();
    udfs.push(normalize_query_udf());
    udfs
}

/// The choice a formula's first argument names (a bound parameter such as `$blend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Choice {
    /// `'mean'` or `'score'` ([`PriorWeighting`]).
    Weighting,
    /// `'paper'` or `'bayes'` ([`Blend`]).
    Blend,
}

/// A parsed [`Choice`] argument.
#[derive(Debug, Clone, Copy)]
enum Chosen {
    None,
    Weighting(PriorWeighting),
    Blend(Blend),
}

/// One formula of [`crate::formula`] as a SQL function: an optional [`Choice`] first, then
/// `numeric` double arguments (integers and floats coerce), a double result.
#[derive(Debug)]
struct Formula {
    name: &'static str,
    description: &'static str,
    syntax: &'static str,
    arguments: &'static [(&'static str, &'static str)],
    choice: Option<Choice>,
    numeric: usize,
    eval: fn(Chosen, &[f64]) -> f64,
}

/// The formulas SQL calls. Each one's arithmetic is `crate::formula`'s; these only adapt arguments.
const FORMULAS: [Formula; 7] = [
    Formula {
        name: "q2q_history",
        description: "History score H = (w_click*clicks + w_add*adds + w_purchase*purchases) / (impressions + kappa) (footnote 2); 0 when the denominator is 0.",
        syntax: "q2q_history(impressions, clicks, adds, purchases, w_click, w_add, w_purchase, kappa)",
        arguments: &[
            ("impressions", "I(q,p)"),
            ("clicks", "clicks of the pair"),
            ("adds", "add-to-carts of the pair"),
            ("purchases", "purchases of the pair"),
            ("w_click", "weight of a click (job default 1)"),
            ("w_add", "weight of an add-to-cart (job default 2)"),
            ("w_purchase", "weight of a purchase (job default 4)"),
            ("kappa", "smoothing added to impressions (job default 10)"),
        ],
        choice: None,
        numeric: 8,
        eval: |_, a| {
            let weights = formula::HistoryWeights {
                click: a[4],
                add: a[5],
                purchase: a[6],
                smoothing: a[7],
            };
            formula::history(&weights, a[0], a[1], a[2], a[3])
        },
    },
    Formula {
        name: "q2q_neighbour_weight",
        description: "A kept neighbour's weight in the prior: 1 for 'mean' (eq. 7), its score for 'score' unless every kept score is 0.",
        syntax: "q2q_neighbour_weight(weighting, score, score_sum)",
        arguments: &[
            ("weighting", "'mean' or 'score' (features.prior_weighting)"),
            ("score", "the neighbour's score"),
            ("score_sum", "the sum of the kept scores of the set"),
        ],
        choice: Some(Choice::Weighting),
        numeric: 2,
        eval: |c, a| match c {
            Chosen::Weighting(w) => formula::neighbour_weight(w, a[0], a[1]),
            _ => f64::NAN,
        },
    },
    Formula {
        name: "q2q_weight_total",
        description: "What the prior divides by: |C_q| for 'mean', the sum of the kept scores for 'score' (|C_q| when that is 0).",
        syntax: "q2q_weight_total(weighting, n_neighbours, score_sum)",
        arguments: &[
            ("weighting", "'mean' or 'score' (features.prior_weighting)"),
            ("n_neighbours", "|C_q|"),
            ("score_sum", "the sum of the kept scores of the set"),
        ],
        choice: Some(Choice::Weighting),
        numeric: 2,
        eval: |c, a| match c {
            Chosen::Weighting(w) => formula::weight_total(w, a[0], a[1]),
            _ => f64::NAN,
        },
    },
    Formula {
        name: "q2q_prior",
        description: "Prior(q,p) = the sum over C_q of weight_c * H(c,p), divided by the set's weight total (eq. 7).",
        syntax: "q2q_prior(weighted_sum, weight_total)",
        arguments: &[
            (
                "weighted_sum",
                "sum of weight_c * H(c,p) over the neighbours with a row for p",
            ),
            ("weight_total", "see q2q_weight_total"),
        ],
        choice: None,
        numeric: 2,
        eval: |_, a| formula::prior(a[0], a[1]),
    },
    Formula {
        name: "q2q_alpha",
        description: "The paper's confidence alpha = tanh(min(gamma, I) / min(gamma, max_p I)) (eq. 9); 0 when the denominator is 0.",
        syntax: "q2q_alpha(impressions, max_impressions, gamma)",
        arguments: &[
            (
                "impressions",
                "I(q,p): impressions of the (query, product) pair",
            ),
            (
                "max_impressions",
                "the largest I(q,p') of any product under the query",
            ),
            ("gamma", "the impression cap (job default 10000)"),
        ],
        choice: None,
        numeric: 3,
        eval: |_, a| formula::alpha_paper(a[0], a[1], a[2]),
    },
    Formula {
        name: "q2q_confidence",
        description: "alpha under a blend: 'paper' as q2q_alpha; 'bayes' (I + kappa) / (I + kappa + m), the empirical-Bayes weight of the pair's evidence against a prior worth m impressions.",
        syntax: "q2q_confidence(blend, impressions, max_impressions, gamma, kappa, m)",
        arguments: &[
            ("blend", "'paper' or 'bayes' (features.blend)"),
            ("impressions", "I(q,p)"),
            (
                "max_impressions",
                "the largest I(q,p') under the query (paper)",
            ),
            ("gamma", "the impression cap (paper; job default 10000)"),
            ("kappa", "H's smoothing (bayes; job default 10)"),
            (
                "m",
                "the prior's worth in impressions (bayes; job default 30)",
            ),
        ],
        choice: Some(Choice::Blend),
        numeric: 5,
        eval: |c, a| match c {
            Chosen::Blend(blend) => {
                let confidence = formula::Confidence {
                    blend,
                    gamma: a[2],
                    smoothing: a[3],
                    pseudo_impressions: a[4],
                };
                formula::alpha(&confidence, a[0], a[1])
            }
            _ => f64::NAN,
        },
    },
    // eq. 8, the same for every blend
    Formula {
        name: "q2q_blend",
        description: "Blended feature F = alpha * H + (1 - alpha) * Prior * beta (eq. 8).",
        syntax: "q2q_blend(h, prior, alpha, beta)",
        arguments: &[
            ("h", "history score H(q,p)"),
            ("prior", "Prior(q,p) from the neighbour set"),
            ("alpha", "confidence, see q2q_confidence"),
            ("beta", "confidence rate of the prior (job default 1)"),
        ],
        choice: None,
        numeric: 4,
        eval: |_, a| formula::blend(a[0], a[1], a[2], a[3]),
    },
];

impl Formula {
    /// The choice is a string; every other argument a double (integer counts and float parameters
    /// coerce), so that SHOW FUNCTIONS can list the types.
    fn udf(&'static self) -> FormulaUdf {
        let choice = self.choice.map(|_| DataType::Utf8);
        let types = choice
            .into_iter()
            .chain(std::iter::repeat_n(DataType::Float64, self.numeric))
            .collect();
        FormulaUdf {
            formula: self,
            signature: Signature::exact(types, Volatility::Immutable),
        }
    }

    fn parse(&self, name: &str) -> Result<Chosen> {
        let chosen = match self.choice {
            None => Some(Chosen::None),
            Some(Choice::Weighting) => PriorWeighting::from_name(name).map(Chosen::Weighting),
            Some(Choice::Blend) => Blend::from_name(name).map(Chosen::Blend),
        };
        match chosen {
            Some(chosen) => Ok(chosen),
            None => exec_err!("{}: unknown {:?} '{name}'", self.name, self.choice),
        }
    }
}

/// A [`Formula`] registered as a scalar UDF.
#[derive(Debug)]
pub struct FormulaUdf {
    formula: &'static Formula,
    signature: Signature,
}

// A formula is known by its name (function pointers have no meaningful identity).
impl PartialEq for FormulaUdf {
    fn eq(&self, other: &Self) -> bool {
        self.formula.name == other.formula.name
    }
}

impl Eq for FormulaUdf {}

impl std::hash::Hash for FormulaUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.formula.name.hash(state);
    }
}

impl ScalarUDFImpl for FormulaUdf {
    fn name(&self) -> &str {
        self.formula.name
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOCS: OnceLock<Vec<Documentation>> = OnceLock::new();
        let docs = DOCS.get_or_init(|| {
            FORMULAS
                .iter()
                .map(|f| {
                    f.arguments
                        .iter()
                        .fold(
                            Documentation::builder(DOC_SECTION, f.description, f.syntax),
                            |b, (name, text)| b.with_argument(*name, *text),
                        )
                        .build()
                })
                .collect()
        });
        FORMULAS
            .iter()
            .position(|f| f.name == self.formula.name)
            .map(|i| &docs[i])
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Always double.
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    /// Null in any numeric argument gives null, like SQL arithmetic; the pipeline never passes
    /// nulls. The choice must be the same in every row (it is a job parameter).
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let f = self.formula;
        let (chosen, numbers) = match f.choice {
            None => (Chosen::None, &args.args[..]),
            Some(_) => {
                let name = match &args.args[0] {
                    ColumnarValue::Scalar(s) => match s.try_as_str() {
                        Some(Some(name)) => name.to_string(),
                        _ => return exec_err!("{}: argument 1 must be a non-null string", f.name),
                    },
                    ColumnarValue::Array(_) => {
                        return exec_err!("{}: argument 1 must be a constant", f.name);
                    }
                };
                (f.parse(&name)?, &args.args[1..])
            }
        };
        map_f64(numbers, f.numeric, |values| (f.eval)(chosen, values))
    }
}

/// Applies `f` row by row to `n` double arguments (arrays or scalars, already coerced), keeping a
/// scalar result when every argument is scalar.
fn map_f64(args: &[ColumnarValue], n: usize, f: impl Fn(&[f64]) -> f64) -> Result<ColumnarValue> {
    if args.len() != n {
        return exec_err!("expected {n} arguments, got {}", args.len());
    }
    let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let columns: Vec<&Float64Array> = arrays
        .iter()
        .map(|a| a.as_primitive::<Float64Type>())
        .collect();
    let rows = arrays.first().map_or(0, |a| a.len());
    let mut values = vec![0.0; n];
    let out: Float64Array = (0..rows)
        .map(|row| {
            for (slot, column) in values.iter_mut().zip(&columns) {
                if column.is_null(row) {
                    return None;
                }
                *slot = column.value(row);
            }
            Some(f(&values))
        })
        .collect();
    columnar(Arc::new(out), all_scalar)
}

/// `normalize_query(text [, lang]) -> string`: the query key of [`crate::normalize`].
pub fn normalize_query_udf() -> ScalarUDF {
    ScalarUDF::from(NormalizeQueryUdf::new())
}

/// `normalize_query(text [, lang])`; `lang` is a language or marketplace code per row (`en`, `ja`,
/// `hi`, `JP`, ...); NULL or an unknown code means "detect from the script".
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NormalizeQueryUdf {
    signature: Signature,
}

impl NormalizeQueryUdf {
    pub fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::String(1), TypeSignature::String(2)],
                Volatility::Immutable,
            ),
        }
    }
}

impl Default for NormalizeQueryUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for NormalizeQueryUdf {
    fn name(&self) -> &str {
        "normalize_query"
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(doc(
            &DOC,
            "The query's normalized key: case and width folded, stop words dropped, stemmed (English), terms sorted; the language from `lang` or the script.",
            "normalize_query(text [, lang])",
            &[
                ("text", "the query"),
                (
                    "lang",
                    "optional language or marketplace code (en, ja, hi, JP, ...); NULL detects it",
                ),
            ],
        ))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// A plain string column, whatever string flavour came in.
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    /// NULL text gives NULL; the language argument may be NULL per row.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = cast(&arrays[0], &DataType::Utf8)?;
        let texts = texts.as_string::<i32>();
        let langs = arrays
            .get(1)
            .map(|a| cast(a, &DataType::Utf8))
            .transpose()?;
        let langs = langs.as_ref().map(|a| a.as_string::<i32>());
        // Engagement rows come grouped by query: reuse the previous row's key when nothing changed.
        let mut previous: Option<(&str, Option<normalize::Lang>, String)> = None;
        let out: StringArray = (0..texts.len())
            .map(|row| {
                if texts.is_null(row) {
                    return None;
                }
                let text = texts.value(row);
                let lang = langs
                    .filter(|l| !l.is_null(row))
                    .and_then(|l| normalize::Lang::from_code(l.value(row)));
                match &previous {
                    Some((t, l, key)) if *t == text && *l == lang => Some(key.clone()),
                    _ => {
                        let key = normalize::normalize_query(text, lang);
                        previous = Some((text, lang, key.clone()));
                        Some(key)
                    }
                }
            })
            .collect();
        columnar(Arc::new(out), all_scalar)
    }
}

/// DataFusion expects a scalar result when every argument was a scalar, an array otherwise.
fn columnar(out: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar {
        Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&out, 0)?,
        ))
    } else {
        Ok(ColumnarValue::Array(out))
    }
}
