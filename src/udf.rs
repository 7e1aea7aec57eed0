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
    vec![
        ScalarUDF::from(AlphaUdf::new()),
        ScalarUDF::from(BlendUdf::new()),
        normalize_query_udf(),
    ]
}

/// `q2q_alpha(impressions, max_impressions, gamma) -> double`: eq. 9.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AlphaUdf {
    signature: Signature,
}

impl AlphaUdf {
    pub fn new() -> Self {
        // Every argument is coerced to double so integer counts and float parameters both work.
        Self {
            signature: Signature::uniform(3, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl Default for AlphaUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for AlphaUdf {
    fn name(&self) -> &str {
        "q2q_alpha"
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(doc(
            &DOC,
            "Confidence alpha = tanh(min(gamma, I) / min(gamma, max_p I)) (eq. 9); 0 when the denominator is 0.",
            "q2q_alpha(impressions, max_impressions, gamma)",
            &[
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
        ))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Always double: alpha is a weight in [0, tanh(1)].
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    /// Null in any argument gives null, like SQL arithmetic; the pipeline never passes nulls.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_f64(&args, |[i, max_i, gamma]: [f64; 3]| {
            formula::alpha(i, max_i, gamma)
        })
    }
}

/// `q2q_blend(h, prior, alpha, beta) -> double`: eq. 8.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BlendUdf {
    signature: Signature,
}

impl BlendUdf {
    pub fn new() -> Self {
        Self {
            signature: Signature::uniform(4, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl Default for BlendUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for BlendUdf {
    fn name(&self) -> &str {
        "q2q_blend"
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(doc(
            &DOC,
            "Blended feature F = alpha * H + (1 - alpha) * Prior * beta (eq. 8).",
            "q2q_blend(h, prior, alpha, beta)",
            &[
                ("h", "history score H(q,p)"),
                ("prior", "Prior(q,p) from the neighbour set"),
                ("alpha", "confidence, see q2q_alpha"),
                ("beta", "confidence rate of the prior (job default 1)"),
            ],
        ))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Always double.
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    /// Null in any argument gives null.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_f64(&args, |[h, prior, alpha, beta]: [f64; 4]| {
            formula::blend(h, prior, alpha, beta)
        })
    }
}

/// Applies `f` row by row to N double arguments (arrays or scalars, already coerced by the
/// signature), keeping a scalar result when every argument is scalar.
fn map_f64<const N: usize>(
    args: &ScalarFunctionArgs,
    f: impl Fn([f64; N]) -> f64,
) -> Result<ColumnarValue> {
    if args.args.len() != N {
        return exec_err!("expected {N} arguments, got {}", args.args.len());
    }
    let all_scalar = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let columns: Vec<&Float64Array> = arrays
        .iter()
        .map(|a| a.as_primitive::<Float64Type>())
        .collect();
    let rows = arrays.first().map_or(0, |a| a.len());
    let out: Float64Array = (0..rows)
        .map(|row| {
            let mut values = [0.0; N];
            for (slot, column) in values.iter_mut().zip(&columns) {
                if column.is_null(row) {
                    return None;
                }
                *slot = column.value(row);
            }
            Some(f(values))
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
