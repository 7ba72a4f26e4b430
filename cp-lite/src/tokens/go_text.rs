//! Go-compatible text: `%q` quoting, `encoding/json` syntax error messages and the
//! `base64.RawURLEncoding` decoder, so that token errors read exactly as Kuma's (Go) do.

use std::fmt::Write as _;

/// Go's `strconv.Quote` (what `%q` prints for a string).
///
/// Printable characters are kept; the rest are escaped the way Go does. Go's notion of
/// "printable" follows Unicode categories; this uses the close approximation of Rust's
/// control/whitespace classes plus the common invisible format characters.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `%q` for a `[]string`: `["a" "b"]`.
pub(crate) fn quote_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `encoding/json` `quoteChar`, used in JSON syntax errors: the byte taken as a
/// code point (Latin-1), quoted with single quotes.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => "'\"'".to_string(),
        _ => {
            let mut out = String::from("'");
            push_escaped(&mut out, char::from(c), '\'');
            out.push('\'');
            out
        }
    }
}

fn push_escaped(out: &mut String, c: char, quote: char) {
    match c {
        '\u{07}' => out.push_str(r"\a"),
        '\u{08}' => out.push_str(r"\b"),
        '\u{0C}' => out.push_str(r"\f"),
        '\n' => out.push_str(r"\n"),
        '\r' => out.push_str(r"\r"),
        '\t' => out.push_str(r"\t"),
        '\u{0B}' => out.push_str(r"\v"),
        '\\' => out.push_str(r"\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if (c as u32) < 0x20 || c == '\u{7F}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_printable(c) => out.push(c),
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(
        c,
        '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{F0000}'..
    )
}

/// Go's `time` package `quote`, used in `time.ParseDuration` errors: non-ASCII and control
/// bytes become `\xNN`, `"` and `\` are backslash-escaped.
pub(crate) fn time_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if !c.is_ascii() || (c as u32) < 0x20 {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Go's `encoding/json` nesting limit.
const MAX_NESTING_DEPTH: usize = 10_000;

#[derive(Clone, Copy)]
enum Container {
    ObjectKey,
    ObjectValue,
    Array,
}

#[derive(Clone, Copy)]
enum State {
    BeginValue,
    BeginValueOrEmpty,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    EndTop,
    InString,
    InStringEsc,
    InStringEscU(u8),
    Neg,
    Zero,
    Digits,
    Dot,
    DotDigits,
    Exp,
    ExpSign,
    ExpDigits,
    /// Inside `true`/`false`/`null`: the literal and how many bytes were read.
    Literal(&'static [u8], usize),
}

/// Checks that `data` is one valid JSON value, like Go's `json.Unmarshal` does before
/// decoding, and returns Go's exact syntax error text otherwise
/// (e.g. `invalid character 'È' looking for beginning of value`).
pub(crate) fn check_json_syntax(data: &[u8]) -> Result<(), String> {
    let mut scanner = Scanner {
        state: State::BeginValue,
        stack: Vec::new(),
    };
    for &c in data {
        scanner.step(c)?;
    }
    // Go feeds a space at EOF to finish numbers; anything still open is unexpected EOF.
    scanner.step(b' ')?;
    match scanner.state {
        State::EndTop => Ok(()),
        _ => Err("unexpected end of JSON input".to_string()),
    }
}

struct Scanner {
    state: State,
    stack: Vec<Container>,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn syntax_error(c: u8, context: &str) -> String {
    format!("invalid character {} {context}", quote_char(c))
}

impl Scanner {
    fn push(&mut self, c: u8, container: Container) -> Result<(), String> {
        self.stack.push(container);
        if self.stack.len() > MAX_NESTING_DEPTH {
            return Err(syntax_error(c, "exceeded max depth"));
        }
        Ok(())
    }

    fn pop(&mut self) {
        self.stack.pop();
        self.state = if self.stack.is_empty() {
            State::EndTop
        } else {
            State::EndValue
        };
    }

    fn step(&mut self, c: u8) -> Result<(), String> {
        match self.state {
            State::BeginValueOrEmpty => {
                if is_space(c) {
                    return Ok(());
                }
                if c == b']' {
                    return self.end_value(c);
                }
                self.begin_value(c)
            }
            State::BeginValue => self.begin_value(c),
            State::BeginStringOrEmpty => {
                if is_space(c) {
                    return Ok(());
                }
                if c == b'}' {
                    if let Some(top) = self.stack.last_mut() {
                        *top = Container::ObjectValue;
                    }
                    return self.end_value(c);
                }
                self.begin_string(c)
            }
            State::BeginString => self.begin_string(c),
            State::EndValue => self.end_value(c),
            State::EndTop => {
                if is_space(c) {
                    Ok(())
                } else {
                    Err(syntax_error(c, "after top-level value"))
                }
            }
            State::InString => {
                match c {
                    b'"' => self.state = State::EndValue,
                    b'\\' => self.state = State::InStringEsc,
                    c if c < 0x20 => return Err(syntax_error(c, "in string literal")),
                    _ => {}
                }
                Ok(())
            }
            State::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => {
                    self.state = State::InString;
                    Ok(())
                }
                b'u' => {
                    self.state = State::InStringEscU(0);
                    Ok(())
                }
                _ => Err(syntax_error(c, "in string escape code")),
            },
            State::InStringEscU(n) => {
                if !c.is_ascii_hexdigit() {
                    return Err(syntax_error(c, "in \\u hexadecimal character escape"));
                }
                self.state = if n == 3 {
                    State::InString
                } else {
                    State::InStringEscU(n + 1)
                };
                Ok(())
            }
            State::Neg => match c {
                b'0' => {
                    self.state = State::Zero;
                    Ok(())
                }
                b'1'..=b'9' => {
                    self.state = State::Digits;
                    Ok(())
                }
                _ => Err(syntax_error(c, "in numeric literal")),
            },
            State::Digits => {
                if c.is_ascii_digit() {
                    return Ok(());
                }
                self.after_integer(c)
            }
            State::Zero => self.after_integer(c),
            State::Dot => {
                if c.is_ascii_digit() {
                    self.state = State::DotDigits;
                    return Ok(());
                }
                Err(syntax_error(c, "after decimal point in numeric literal"))
            }
            State::DotDigits => match c {
                b'0'..=b'9' => Ok(()),
                b'e' | b'E' => {
                    self.state = State::Exp;
                    Ok(())
                }
                _ => self.end_value(c),
            },
            State::Exp => {
                if c == b'+' || c == b'-' {
                    self.state = State::ExpSign;
                    return Ok(());
                }
                self.exp_sign(c)
            }
            State::ExpSign => self.exp_sign(c),
            State::ExpDigits => {
                if c.is_ascii_digit() {
                    return Ok(());
                }
                self.end_value(c)
            }
            State::Literal(literal, read) => {
                let expected = literal[read];
                if c != expected {
                    let name = String::from_utf8_lossy(literal);
                    return Err(syntax_error(
                        c,
                        &format!("in literal {name} (expecting {})", quote_char(expected)),
                    ));
                }
                self.state = if read + 1 == literal.len() {
                    State::EndValue
                } else {
                    State::Literal(literal, read + 1)
                };
                Ok(())
            }
        }
    }

    fn begin_value(&mut self, c: u8) -> Result<(), String> {
        self.state = match c {
            c if is_space(c) => return Ok(()),
            b'{' => {
                self.push(c, Container::ObjectKey)?;
                State::BeginStringOrEmpty
            }
            b'[' => {
                self.push(c, Container::Array)?;
                State::BeginValueOrEmpty
            }
            b'"' => State::InString,
            b'-' => State::Neg,
            b'0' => State::Zero,
            b'1'..=b'9' => State::Digits,
            b't' => State::Literal(b"true", 1),
            b'f' => State::Literal(b"false", 1),
            b'n' => State::Literal(b"null", 1),
            _ => return Err(syntax_error(c, "looking for beginning of value")),
        };
        Ok(())
    }

    fn begin_string(&mut self, c: u8) -> Result<(), String> {
        if is_space(c) {
            return Ok(());
        }
        if c == b'"' {
            self.state = State::InString;
            return Ok(());
        }
        Err(syntax_error(
            c,
            "looking for beginning of object key string",
        ))
    }

    fn after_integer(&mut self, c: u8) -> Result<(), String> {
        match c {
            b'.' => {
                self.state = State::Dot;
                Ok(())
            }
            b'e' | b'E' => {
                self.state = State::Exp;
                Ok(())
            }
            _ => self.end_value(c),
        }
    }

    fn exp_sign(&mut self, c: u8) -> Result<(), String> {
        if c.is_ascii_digit() {
            self.state = State::ExpDigits;
            return Ok(());
        }
        Err(syntax_error(c, "in exponent of numeric literal"))
    }

    fn end_value(&mut self, c: u8) -> Result<(), String> {
        let Some(top) = self.stack.last().copied() else {
            self.state = State::EndTop;
            return self.step(c);
        };
        if is_space(c) {
            self.state = State::EndValue;
            return Ok(());
        }
        match top {
            Container::ObjectKey => {
                if c == b':' {
                    if let Some(top) = self.stack.last_mut() {
                        *top = Container::ObjectValue;
                    }
                    self.state = State::BeginValue;
                    return Ok(());
                }
                Err(syntax_error(c, "after object key"))
            }
            Container::ObjectValue => match c {
                b',' => {
                    if let Some(top) = self.stack.last_mut() {
                        *top = Container::ObjectKey;
                    }
                    self.state = State::BeginString;
                    Ok(())
                }
                b'}' => {
                    self.pop();
                    Ok(())
                }
                _ => Err(syntax_error(c, "after object key:value pair")),
            },
            Container::Array => match c {
                b',' => {
                    self.state = State::BeginValue;
                    Ok(())
                }
                b']' => {
                    self.pop();
                    Ok(())
                }
                _ => Err(syntax_error(c, "after array element")),
            },
        }
    }
}

/// The JSON kind names Go uses in `json: cannot unmarshal <kind> into ...`.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Parses `data` as JSON the way Go's `json.Unmarshal` accepts it: Go's syntax errors,
/// and invalid UTF-8 inside strings replaced by U+FFFD instead of rejected.
pub(crate) fn parse_json(data: &[u8]) -> Result<serde_json::Value, String> {
    check_json_syntax(data)?;
    let text = String::from_utf8_lossy(data);
    // The syntax is valid by now; what serde_json may still reject (nesting beyond its
    // recursion limit, lone surrogate escapes, numbers out of f64 range) is reported in
    // its own words.
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Go's `base64.CorruptInputError` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Error {
    /// Offset of the offending byte in the input.
    pub offset: usize,
}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "illegal base64 data at input byte {}", self.offset)
    }
}

impl std::error::Error for Base64Error {}

fn url_sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Go's `base64.RawURLEncoding.DecodeString` (non-strict): no padding, `\r` and `\n`
/// skipped anywhere, unused trailing bits ignored.
pub(crate) fn decode_base64url(input: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut pending = 0usize;
    for (i, &c) in input.iter().enumerate() {
        if c == b'\r' || c == b'\n' {
            continue;
        }
        let Some(v) = url_sextet(c) else {
            return Err(Base64Error { offset: i });
        };
        acc = (acc << 6) | u32::from(v);
        pending += 1;
        if pending == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            pending = 0;
        }
    }
    match pending {
        0 => {}
        1 => {
            return Err(Base64Error {
                offset: input.len() - 1,
            });
        }
        2 => out.push((acc >> 4) as u8),
        _ => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
    }
    Ok(out)
}

/// Go's `encoding/json` output escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings;
/// serde_json does not. These characters only occur inside strings in serialized JSON,
/// so a plain replacement gives Go's bytes.
pub(crate) fn go_html_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str(r"\u003c"),
            '>' => out.push_str(r"\u003e"),
            '&' => out.push_str(r"\u0026"),
            '\u{2028}' => out.push_str(r"\u2028"),
            '\u{2029}' => out.push_str(r"\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(quote("web"), r#""web""#);
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        assert_eq!(quote("é😀"), "\"é😀\"");
        assert_eq!(quote("\u{85}\u{a0}\u{feff}"), r#""\u0085\u00a0\ufeff""#);
        assert_eq!(quote_list(&["a", "b"]), r#"["a" "b"]"#);
        assert_eq!(quote_list::<&str>(&[]), "[]");
    }

    #[test]
    fn time_quote_escapes_bytes() {
        assert_eq!(time_quote("1x"), r#""1x""#);
        assert_eq!(time_quote("1µs\""), r#""1\xc2\xb5s\"""#);
    }

    #[test]
    fn json_syntax_errors_match_go() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "unexpected end of JSON input"),
            (b"   ", "unexpected end of JSON input"),
            (b"{\"a\":", "unexpected end of JSON input"),
            (
                b"\xc8\x96",
                "invalid character 'È' looking for beginning of value",
            ),
            (
                b"\x8a",
                r"invalid character '\u008a' looking for beginning of value",
            ),
            (
                b"\x13",
                r"invalid character '\x13' looking for beginning of value",
            ),
            (b"m", "invalid character 'm' looking for beginning of value"),
            (b"{\"a\" 1}", "invalid character '1' after object key"),
            (
                b"{\"a\":1 2}",
                "invalid character '2' after object key:value pair",
            ),
            (
                b"{1}",
                "invalid character '1' looking for beginning of object key string",
            ),
            (b"[1 2]", "invalid character '2' after array element"),
            (b"{} x", "invalid character 'x' after top-level value"),
            (b"\"a\x01\"", r"invalid character '\x01' in string literal"),
            (b"\"\\x\"", "invalid character 'x' in string escape code"),
            (
                b"\"\\u12g4\"",
                r"invalid character 'g' in \u hexadecimal character escape",
            ),
            (b"-x", "invalid character 'x' in numeric literal"),
            (
                b"1.x",
                "invalid character 'x' after decimal point in numeric literal",
            ),
            (
                b"1ex",
                "invalid character 'x' in exponent of numeric literal",
            ),
            // Go feeds a space at EOF, so a cut literal or number fails on that space.
            (
                b"tru",
                "invalid character ' ' in literal true (expecting 'e')",
            ),
            (b"-", "invalid character ' ' in numeric literal"),
            (b"\"abc", "unexpected end of JSON input"),
            (b"[1", "unexpected end of JSON input"),
            (
                b"trux",
                "invalid character 'x' in literal true (expecting 'e')",
            ),
            (
                b"nul1",
                "invalid character '1' in literal null (expecting 'l')",
            ),
            (
                b"'",
                r"invalid character '\'' looking for beginning of value",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                check_json_syntax(input).unwrap_err(),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        for ok in [
            &b"{}"[..],
            b" {\"a\": [1, -0.5e+3, true, false, null, \"\\u00e9\\n\"]} ",
            b"0",
            b"[]",
            b"{\"a\":{}}",
        ] {
            assert_eq!(
                check_json_syntax(ok),
                Ok(()),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(20_000);
        assert_eq!(
            check_json_syntax(deep.as_bytes()).unwrap_err(),
            "invalid character '[' exceeded max depth"
        );
        let nested = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert!(parse_json(nested.as_bytes()).is_err());
    }

    #[test]
    fn parse_json_replaces_invalid_utf8_in_strings() {
        let value = parse_json(b"{\"a\":\"x\xffy\"}").unwrap();
        assert_eq!(value["a"], "x\u{fffd}y");
    }

    #[test]
    fn base64url_decoding_matches_go() {
        assert_eq!(decode_base64url(b"eyJhIjoxfQ").unwrap(), b"{\"a\":1}");
        assert_eq!(decode_base64url(b"eyJhIjox\nfQ\n").unwrap(), b"{\"a\":1}");
        assert_eq!(decode_base64url(b"").unwrap(), b"");
        assert_eq!(
            decode_base64url(b"eyJh=").unwrap_err().to_string(),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            decode_base64url(b"ab+c").unwrap_err().to_string(),
            "illegal base64 data at input byte 2"
        );
        assert_eq!(
            decode_base64url(b"abcde").unwrap_err().to_string(),
            "illegal base64 data at input byte 4"
        );
    }

    #[test]
    fn html_characters_are_escaped_like_go() {
        assert_eq!(
            go_html_escape(r#"{"a":"<b>&"}"#.to_string()),
            r#"{"a":"\u003cb\u003e\u0026"}"#
        );
        assert_eq!(go_html_escape("{}".to_string()), "{}");
    }
}
