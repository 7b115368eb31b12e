//! Reading a Prometheus text exposition (format 0.0.4): sample lines ([`parse_exposition`])
//! and quantiles estimated from histogram buckets ([`quantile`]), as `engine status` needs
//! them.

/// One sample line of an exposition document.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (for summaries including `_sum` / `_count`).
    pub name: String,
    /// Labels in document order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `want` is among the labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Parses the sample lines of a Prometheus text exposition (comments and blank lines are
/// skipped; timestamps are accepted and ignored).
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err("missing metric name");
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_string();
            if key.is_empty() {
                return Err("empty label name");
            }
            rest = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                }
            };
            labels.push((key, value));
            rest = rest[end + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label");
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "bad value")?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing data");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The `q` quantile (0 to 1) of the distribution `name`. Where the node exports a summary this
/// is its `{quantile="q"}` series. Otherwise it is estimated from the `name_bucket` series,
/// summed over any other labels, as PromQL's `histogram_quantile` does: linear interpolation
/// inside the bucket that holds the rank, with the lowest bucket starting at 0 and a rank in
/// the `+Inf` bucket reported as the highest finite bound. `None` without such series or
/// without observations.
pub(crate) fn quantile(samples: &[Sample], name: &str, q: f64) -> Option<f64> {
    let label = format!("{q}");
    if let Some(s) = samples
        .iter()
        .find(|s| s.name == name && s.label("quantile") == Some(label.as_str()))
    {
        return Some(s.value);
    }
    let bucket_name = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == bucket_name) {
        let le = match s.label("le")? {
            "+Inf" | "Inf" => f64::INFINITY,
            v => v.parse().ok()?,
        };
        if le.is_nan() || !s.value.is_finite() {
            return None;
        }
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += s.value,
            None => buckets.push((le, s.value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let &(last_le, total) = buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank && count > lower.1 {
            if le == f64::INFINITY {
                return Some(lower.0);
            }
            let (low, below) = lower;
            return Some(low + (le - low) * (rank - below) / (count - below));
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_parser_handles_escapes_and_rejects_garbage() {
        let s = parse_line(r#"m_total{a="x\"y\\z\n",b="1"} 12 1700000000000"#).unwrap();
        assert_eq!(s.name, "m_total");
        assert_eq!(s.label("a"), Some("x\"y\\z\n"));
        assert_eq!(s.label("b"), Some("1"));
        assert_eq!(s.value, 12.0);
        assert!(parse_line("m NaN").unwrap().value.is_nan());
        assert_eq!(parse_line("m{} +Inf").unwrap().value, f64::INFINITY);
        for bad in [
            "{a=\"1\"} 1",
            "m{a=1} 1",
            "m{a=\"1\" 1",
            "m",
            "m x",
            "m 1 2 3",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        // Label values with awkward characters survive the engine's encoder and this parser.
        use prometheus_client::metrics::{counter::Counter, family::Family};
        let awkward = "a\"b\\c\nd,e=f}";
        let family = Family::<Vec<(String, String)>, Counter>::default();
        family
            .get_or_create(&vec![("k".to_string(), awkward.to_string())])
            .inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("x", "Awkward labels", family);
        let text = engine::metrics::encode::encode_text(&registry).unwrap();
        let back = parse_exposition(&text).unwrap();
        assert_eq!(back.len(), 1, "{text}");
        assert_eq!(back[0].name, "x_total");
        assert_eq!(back[0].label("k"), Some(awkward));
    }

    fn doc(lines: &str) -> Vec<Sample> {
        parse_exposition(lines).unwrap()
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = doc(
            "h_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 6\nh_bucket{le=\"4\"} 8\n\
                     h_bucket{le=\"+Inf\"} 10\nh_sum 30\nh_count 10\n",
        );
        // Rank 1 of 10 is halfway through the first bucket, which starts at 0.
        assert_eq!(quantile(&h, "h", 0.1), Some(0.5));
        // Rank 5: 3 of the second bucket's 4.
        assert_eq!(quantile(&h, "h", 0.5), Some(1.75));
        assert_eq!(quantile(&h, "h", 0.8), Some(4.0));
        // Rank 9 is in +Inf: the highest finite bound.
        assert_eq!(quantile(&h, "h", 0.9), Some(4.0));
        assert_eq!(quantile(&h, "h", 0.0), Some(0.0));
        assert_eq!(quantile(&h, "h", 1.5), None);
        assert_eq!(quantile(&h, "missing", 0.5), None);
    }

    #[test]
    fn quantiles_of_empty_or_broken_histograms_are_unknown() {
        let empty = doc("h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\n");
        assert_eq!(quantile(&empty, "h", 0.5), None);
        let no_inf = doc("h_bucket{le=\"1\"} 3\n");
        assert_eq!(quantile(&no_inf, "h", 0.5), None);
        let bad_le = doc("h_bucket{le=\"x\"} 3\nh_bucket{le=\"+Inf\"} 3\n");
        assert_eq!(quantile(&bad_le, "h", 0.5), None);
    }

    #[test]
    fn summaries_are_read_as_they_are() {
        let s = doc("s{quantile=\"0.5\"} 0.25\ns{quantile=\"0.99\"} 0.5\ns_count 3\n");
        assert_eq!(quantile(&s, "s", 0.5), Some(0.25));
        assert_eq!(quantile(&s, "s", 0.99), Some(0.5));
        assert_eq!(quantile(&s, "s", 0.9), None);
    }
}
