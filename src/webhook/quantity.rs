//! Kubernetes resource quantities (`100m`, `16Mi`, `1e3`) read exactly, as
//! the API server reads them, to check the sidecar's resources before the
//! API server would reject them.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The sidecar's CPU and memory, requests and limits alike, after
/// annotations over the webhook's defaults, in thousandths of a core or a
/// byte (as `milli_value` counts): at least 1m and 1Mi, at most 64 cores
/// and 64Gi, whatever a node has. Outside them a value is a mistake (`-1`,
/// `64` for `64Mi`, `1e999`), not a sidecar that can run; a limit is also
/// never below its request, as the API server requires.
pub const RESOURCE_BOUNDS: [(&str, i128, i128, &str); 2] = [
    ("cpu", 1, 64 * 1000, "must be between 1m and 64 (cores)"),
    (
        "memory",
        (1 << 20) * 1000,
        (64 << 30) * 1000,
        "must be between 1Mi and 64Gi",
    ),
];

/// Why `q` cannot be the sidecar's `resource` (a request or a limit): not a
/// quantity, not positive, or outside [`RESOURCE_BOUNDS`] (which only bound
/// `cpu` and `memory`).
pub(crate) fn check_resource(resource: &str, q: &str) -> Result<(), &'static str> {
    let milli = milli_value(q).ok_or("not a Kubernetes quantity (e.g. 10m, 16Mi)")?;
    if milli <= 0 {
        return Err("must be positive");
    }
    match RESOURCE_BOUNDS.iter().find(|(name, ..)| *name == resource) {
        Some((_, min, max, range)) if !(min..=max).contains(&&milli) => Err(*range),
        _ => Ok(()),
    }
}

/// `limit` below `request`, compared as the API server compares them
/// (`100m` equals `0.1`, `1Gi` equals `1073741824`); false when either is
/// not a quantity.
pub(crate) fn is_below(limit: &Quantity, request: &Quantity) -> bool {
    milli_value(&limit.0)
        .zip(milli_value(&request.0))
        .is_some_and(|(limit, request)| limit < request)
}

/// A Kubernetes resource quantity's value in thousandths of its unit
/// (millicores, millibytes), or `None` when `s` is not a quantity: a decimal
/// number with an optional binary (`Ki`…`Ei`), decimal (`n`, `u`, `m`, `k`,
/// `M`…`E`) or exponent (`e3`, `E-2`) suffix. Exact, in integers: rounded
/// up to the thousandth as the API server rounds (`0.1m` is `1m`), and
/// saturating at `i128::MAX` (`1e999`). Past 30 significant digits it is
/// exact only below a thousandth, far beyond any bound.
pub(crate) fn milli_value(s: &str) -> Option<i128> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || whole.len() + frac.len() == 0 {
        return None;
    }
    // The value is digits × 10^exp10 × 1024^exp1024.
    let (exp10, exp1024): (i64, u32) = match suffix {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        e => {
            let exp = e.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Clamped so that adding digit counts cannot overflow; from
            // far below this on, a value saturates or rounds up to one.
            let n = digits.parse::<i64>().unwrap_or(i64::MAX).min(1 << 50);
            (if exp.starts_with('-') { -n } else { n }, 0)
        }
    };
    let digits: Vec<u8> = whole
        .bytes()
        .chain(frac.bytes())
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    let kept = digits.len().min(30);
    let mantissa = digits[..kept]
        .iter()
        .fold(0u128, |m, &d| m * 10 + u128::from(d));
    let dropped_nonzero = digits[kept..].iter().any(|&d| d != 0);
    let len = |n: usize| i64::try_from(n).unwrap_or(1 << 50);
    // In thousandths.
    let exp10 = exp10 + 3 - len(frac.len()) + len(digits.len() - kept);
    let pow10 = |e: i64| u32::try_from(e).ok().and_then(|e| 10u128.checked_pow(e));
    let milli = match mantissa.checked_mul(1 << (10 * exp1024)) {
        None => u128::MAX,
        Some(0) => 0,
        Some(v) if exp10 >= 0 => pow10(exp10)
            .and_then(|p| v.checked_mul(p))
            .unwrap_or(u128::MAX),
        Some(v) => match pow10(-exp10) {
            Some(p) => v / p + u128::from(v % p != 0 || dropped_nonzero),
            // Positive, under a thousandth: one.
            None => 1,
        },
    };
    let milli = i128::try_from(milli).unwrap_or(i128::MAX);
    Some(if negative { -milli } else { milli })
}
