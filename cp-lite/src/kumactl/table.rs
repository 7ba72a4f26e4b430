//! Table output shared by `get`, `inspect` and the `config`/`manage` listings, formatted like
//! Kuma's kumactl: columns aligned with three spaces of padding, ages like `5m`, `3h`, `2d`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use tabwriter::TabWriter;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Renders a header and rows as aligned columns (Go `tabwriter` with minwidth 1, padding 3, as
/// in Kuma). The last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut writer = TabWriter::new(Vec::new()).minwidth(1).padding(3);
    // Writing into a Vec cannot fail; the results are ignored for that reason.
    let _ = writeln!(writer, "{}", headers.join("\t"));
    for row in rows {
        // A tab or newline inside a cell would break the layout.
        let cells: Vec<String> = row
            .iter()
            .map(|cell| cell.replace(['\t', '\n'], " "))
            .collect();
        let _ = writeln!(writer, "{}", cells.join("\t"));
    }
    match writer.into_inner() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// Kuma's human duration: `never` for clearly negative values, then `Ns`, `Nm`, `Nh`, `Nd`,
/// `Ny`, truncating.
pub fn human_duration(duration: time::Duration) -> String {
    let seconds = duration.whole_seconds();
    if seconds < -1 {
        "never".to_owned()
    } else if seconds < 0 {
        "0s".to_owned()
    } else if seconds < 60 {
        format!("{seconds}s")
    } else if duration.whole_minutes() < 60 {
        format!("{}m", duration.whole_minutes())
    } else if duration.whole_hours() < 24 {
        format!("{}h", duration.whole_hours())
    } else if duration.whole_hours() < 24 * 365 {
        format!("{}d", duration.whole_hours() / 24)
    } else {
        format!("{}y", duration.whole_hours() / 24 / 365)
    }
}

/// The AGE / "AGO" cell for a timestamp: `never` when absent.
pub fn ago(time: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match time {
        Some(time) => human_duration(now - time),
        None => "never".to_owned(),
    }
}

/// A date cell: `2020-05-08 08:28:22` in UTC, or `-` when absent.
pub fn date(time: Option<OffsetDateTime>) -> String {
    match time {
        Some(time) => {
            let time = time.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                time.year(),
                u8::from(time.month()),
                time.day(),
                time.hour(),
                time.minute(),
                time.second()
            )
        }
        None => "-".to_owned(),
    }
}

/// Reads an RFC 3339 timestamp field of a JSON object.
pub fn timestamp(value: &serde_json::Value, field: &str) -> Option<OffsetDateTime> {
    value
        .get(field)
        .and_then(serde_json::Value::as_str)
        .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
}

/// A tag set as Kuma prints it: keys sorted, each `key=v1,v2` with sorted unique values,
/// separated by spaces.
pub fn tag_set_string(tags: &BTreeMap<String, BTreeSet<String>>) -> String {
    tags.iter()
        .map(|(key, values)| {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            format!("{key}={}", values.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tag set of a Dataplane spec: the union of every inbound's tags and the gateway's tags.
pub fn dataplane_tags(spec: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let networking = &spec["networking"];
    let inbound_tags = networking["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|inbound| &inbound["tags"]);
    let gateway_tags = std::iter::once(&networking["gateway"]["tags"]);
    for tag_map in inbound_tags.chain(gateway_tags) {
        if let Some(map) = tag_map.as_object() {
            for (key, value) in map {
                let value = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                tags.entry(key.clone()).or_default().insert(value);
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn human_durations_match_kuma() {
        let cases = [
            (time::Duration::seconds(-2), "never"),
            (time::Duration::ZERO, "0s"),
            (time::Duration::seconds(1), "1s"),
            (
                time::Duration::minutes(1) - time::Duration::milliseconds(1),
                "59s",
            ),
            (time::Duration::minutes(1), "1m"),
            (
                time::Duration::hours(1) - time::Duration::milliseconds(1),
                "59m",
            ),
            (
                time::Duration::hours(3) - time::Duration::milliseconds(1),
                "2h",
            ),
            (time::Duration::hours(24), "1d"),
            (time::Duration::days(365), "1y"),
            (time::Duration::days(3650), "10y"),
        ];
        for (input, expected) in cases {
            assert_eq!(human_duration(input), expected, "{input}");
        }
    }

    #[test]
    fn renders_like_kumas_golden_table() {
        let table = render(
            &["MESH", "NAME", "TAGS", "AGE"],
            &[
                vec![
                    "default".into(),
                    "experiment".into(),
                    "service=metrics,mobile version=v1".into(),
                    "2d".into(),
                ],
                vec![
                    "default".into(),
                    "example".into(),
                    "service=web version=v2".into(),
                    "5m".into(),
                ],
            ],
        );
        assert_eq!(
            table,
            "MESH      NAME         TAGS                                AGE\n\
             default   experiment   service=metrics,mobile version=v1   2d\n\
             default   example      service=web version=v2              5m\n"
        );
    }

    #[test]
    fn header_only_when_there_are_no_rows() {
        assert_eq!(render(&["MESH", "NAME", "AGE"], &[]), "MESH   NAME   AGE\n");
    }

    #[test]
    fn dates_and_ages() {
        let now = datetime!(2020-05-08 10:28:22 UTC);
        assert_eq!(
            date(Some(datetime!(2020-05-08 08:28:22 UTC))),
            "2020-05-08 08:28:22"
        );
        assert_eq!(
            date(Some(datetime!(2020-05-08 10:28:22 +02:00))),
            "2020-05-08 08:28:22"
        );
        assert_eq!(date(None), "-");
        assert_eq!(ago(Some(datetime!(2020-05-08 08:28:22 UTC)), now), "2h");
        assert_eq!(ago(None, now), "never");
        let value = serde_json::json!({"t": "2020-05-08T08:28:22.5Z", "bad": "yesterday"});
        assert_eq!(
            timestamp(&value, "t"),
            Some(datetime!(2020-05-08 08:28:22.5 UTC))
        );
        assert_eq!(timestamp(&value, "bad"), None);
        assert_eq!(timestamp(&value, "missing"), None);
    }

    #[test]
    fn tag_sets_are_sorted_and_merged() {
        let spec = serde_json::json!({"networking": {
            "address": "10.0.0.1",
            "inbound": [
                {"port": 1, "tags": {"version": "v1", "kuma.io/service": "web"}},
                {"port": 2, "tags": {"kuma.io/service": "web-api", "version": "v1"}}
            ]
        }});
        assert_eq!(
            tag_set_string(&dataplane_tags(&spec)),
            "kuma.io/service=web,web-api version=v1"
        );
        let gateway =
            serde_json::json!({"networking": {"gateway": {"tags": {"kuma.io/service": "edge"}}}});
        assert_eq!(
            tag_set_string(&dataplane_tags(&gateway)),
            "kuma.io/service=edge"
        );
        assert_eq!(tag_set_string(&dataplane_tags(&serde_json::json!({}))), "");
    }
}
