//! Number formatting for verdict reasons and thresholds.

/// A bound as written: shortest form, floating-point noise removed (`0.07`, `5`, `0.5`).
pub(crate) fn fmt_exact(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let r = (v * 1e9).round() / 1e9;
    let r = if r == 0.0 { 0.0 } else { r };
    format!("{r}")
}

/// A measured value with about four significant digits (`0.062`, `612.3`, `1235`).
pub(crate) fn fmt_sig(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 12) as usize;
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".to_string() } else { text }
}

/// Milliseconds as a latency: `850µs`, `12.5ms`, `612ms`, `1.25s`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return format!("{ms}ms");
    }
    if ms.abs() < 1.0 && ms != 0.0 {
        format!("{}µs", fmt_sig(ms * 1000.0))
    } else if ms.abs() < 1000.0 {
        format!("{}ms", fmt_sig(ms))
    } else {
        format!("{}s", fmt_sig(ms / 1000.0))
    }
}

/// A window length: `500ms`, `5s`, `7.5s`, `2m`, `2m30s`.
pub(crate) fn fmt_window(ms: i64) -> String {
    if ms < 1000 {
        format!("{}ms", ms.max(0))
    } else if ms < 60_000 {
        format!("{}s", fmt_sig((ms as f64 / 100.0).round() / 10.0))
    } else {
        let secs = (ms + 500) / 1000;
        let (m, s) = (secs / 60, secs % 60);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    }
}

/// A share as a percentage: `6.2%`, `0.05%`.
pub(crate) fn fmt_pct(fraction: f64) -> String {
    format!("{}%", fmt_sig(fraction * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_exact(0.07 * 100.0), "7");
        assert_eq!(fmt_exact(0.005 * 100.0), "0.5");
        assert_eq!(fmt_sig(0.062), "0.062");
        assert_eq!(fmt_sig(31.0 / 500.0), "0.062");
        assert_eq!(fmt_sig(612.34), "612.3");
        assert_eq!(fmt_sig(1234.6), "1235");
        assert_eq!(fmt_sig(0.000_123_46), "0.0001235");
        assert_eq!(fmt_ms(0.85), "850µs");
        assert_eq!(fmt_ms(612.0), "612ms");
        assert_eq!(fmt_ms(1250.0), "1.25s");
        assert_eq!(fmt_window(5000), "5s");
        assert_eq!(fmt_window(7540), "7.5s");
        assert_eq!(fmt_window(150_000), "2m30s");
        assert_eq!(fmt_window(0), "0ms");
        assert_eq!(fmt_pct(0.062), "6.2%");
    }
}
