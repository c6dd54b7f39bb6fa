//! Kubernetes resource quantities (`100m`, `1`, `64Mi`, `1G`, `1e3`, `0.5`).

/// Parses a quantity into its value as a float (`"100m"` → 0.1,
/// `"64Mi"` → 67108864). None when it is not a valid quantity.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (sign, body) = match s.as_bytes()[0] {
        b'-' => (-1.0, &s[1..]),
        b'+' => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            // Decimal exponent: 1e3, 2E-2.
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let e: i32 = exp.parse().ok()?;
            10f64.powi(e)
        }
    };
    Some(sign * n * mult)
}

/// A CPU quantity in millicores, rounded up as upstream's MilliValue.
pub fn cpu_milli(s: &str) -> Option<i64> {
    parse(s).map(|v| (v * 1000.0 - 1e-9).ceil() as i64)
}

/// An integer quantity (bytes, pods), rounded up as upstream's Value.
pub fn value(s: &str) -> Option<i64> {
    parse(s).map(|v| (v - 1e-9).ceil() as i64)
}

/// Reads a quantity that may be a JSON string or number.
pub fn from_json(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu() {
        assert_eq!(cpu_milli("100m"), Some(100));
        assert_eq!(cpu_milli("1"), Some(1000));
        assert_eq!(cpu_milli("0.5"), Some(500));
        assert_eq!(cpu_milli("2.25"), Some(2250));
        assert_eq!(cpu_milli("32"), Some(32000));
        assert_eq!(cpu_milli("1500u"), Some(2));
        assert_eq!(cpu_milli("1e3"), Some(1_000_000));
    }

    #[test]
    fn parses_memory() {
        assert_eq!(value("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(value("1G"), Some(1_000_000_000));
        assert_eq!(value("1Gi"), Some(1 << 30));
        assert_eq!(value("256Gi"), Some(256 << 30));
        assert_eq!(value("128974848"), Some(128_974_848));
        assert_eq!(value("129e6"), Some(129_000_000));
        assert_eq!(value("123Mi"), Some(123 * 1024 * 1024));
        assert_eq!(value("1k"), Some(1000));
        assert_eq!(value("1Ki"), Some(1024));
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("1.5Gi"), Some(1610612736));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "m", "1x", "1..2", "abc", "1Zi", "."] {
            assert_eq!(parse(s), None, "{s}");
        }
        assert_eq!(from_json(&serde_json::json!(2)), Some(2.0));
        assert_eq!(from_json(&serde_json::json!("250m")), Some(0.25));
    }
}
