//! A small SOQL subset, enough for the contract's reads and strict enough to catch clients that
//! build queries carelessly:
//!
//! ```text
//! SELECT item {, item} FROM Object
//!   [WHERE cond {AND cond}] [ORDER BY path [ASC|DESC]] [LIMIT n]
//! item := path | ( SELECT path {, path} FROM ChildRelationship [WHERE ...] [LIMIT n] )
//! cond := path = literal | path IN ( literal {, literal} )
//! literal := 'string with \' escapes' | number | null | true | false
//! ```
//!
//! Keywords and names are case-insensitive; results use canonical casing. There is no `OR`,
//! `LIKE` or `!=`, so the classic injection `' OR Id != '` is a MALFORMED_QUERY, and Id filters
//! must hold well-formed ids, as in Salesforce.

use serde_json::{json, Map, Value};

use crate::sobjects::{ChildRel, FieldDef, FieldKind, ParentRel, SObject};
use crate::store::{canonical_id, Record, Store};

/// A 400 answer: `errorCode` and Salesforce-style message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoqlError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Comma,
    LParen,
    RParen,
    Eq,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset into the query, for the caret in error messages.
    pos: usize,
    text: String,
}

/// Renders Salesforce's positioned error: the query line, a caret, row and column, the reason.
fn positioned(query: &str, pos: usize, code: &'static str, reason: &str) -> SoqlError {
    let pos = pos.min(query.len());
    let before = query.get(..pos).unwrap_or(query);
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = query.get(line_start..pos).map_or(0, |s| s.chars().count()) + 1;
    let line = query
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let caret = format!("{}^", " ".repeat(column - 1));
    SoqlError {
        code,
        message: format!("\n{line}\n{caret}\nERROR at Row:{row}:Column:{column}\n{reason}"),
    }
}

fn lex(query: &str) -> Result<Vec<Token>, SoqlError> {
    let malformed = |pos: usize, reason: String| positioned(query, pos, "MALFORMED_QUERY", &reason);
    let mut tokens = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let single = match c {
            ',' => Some(Tok::Comma),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = single {
            chars.next();
            tokens.push(Token {
                tok,
                pos,
                text: c.to_string(),
            });
        } else if c == '\'' {
            chars.next();
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\'' => {
                        closed = true;
                        break;
                    }
                    '\\' => {
                        let escaped = match chars.next().map(|(_, e)| e) {
                            Some('n' | 'N') => "\n".to_owned(),
                            Some('r' | 'R') => "\r".to_owned(),
                            Some('t' | 'T') => "\t".to_owned(),
                            Some('b' | 'B') => "\u{8}".to_owned(),
                            Some('f' | 'F') => "\u{c}".to_owned(),
                            Some(e @ ('\'' | '"' | '\\')) => e.to_string(),
                            // Only meaningful in LIKE patterns; kept literally.
                            Some(e @ ('_' | '%')) => format!("\\{e}"),
                            _ => {
                                return Err(malformed(
                                    pos,
                                    "Invalid string literal: invalid escape sequence".to_owned(),
                                ))
                            }
                        };
                        value.push_str(&escaped);
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return Err(malformed(
                    pos,
                    "line 1:0 mismatched character '<EOF>' expecting '''".into(),
                ));
            }
            let end = chars.peek().map_or(query.len(), |&(i, _)| i);
            tokens.push(Token {
                tok: Tok::Str(value),
                pos,
                text: query.get(pos..end).unwrap_or_default().to_owned(),
            });
        } else if c.is_ascii_digit() || c == '-' || c == '.' {
            let mut end = pos;
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_digit() || d == '.' || (i == pos && d == '-') {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let text = query.get(pos..end).unwrap_or_default();
            let value = text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| malformed(pos, format!("unexpected token: '{text}'")))?;
            tokens.push(Token {
                tok: Tok::Num(value),
                pos,
                text: text.to_owned(),
            });
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = pos;
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' {
                    end = i + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            let text = query.get(pos..end).unwrap_or_default().to_owned();
            tokens.push(Token {
                tok: Tok::Ident(text.clone()),
                pos,
                text,
            });
        } else {
            return Err(malformed(pos, format!("unexpected token: '{c}'")));
        }
    }
    tokens.push(Token {
        tok: Tok::End,
        pos: query.len(),
        text: "<EOF>".into(),
    });
    Ok(tokens)
}

#[derive(Debug, Clone)]
enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug)]
struct RawPath {
    text: String,
    pos: usize,
}

#[derive(Debug)]
enum RawItem {
    Path(RawPath),
    Sub(Box<RawQuery>, usize),
}

#[derive(Debug)]
struct RawCond {
    path: RawPath,
    values: Vec<(Literal, usize)>,
}

#[derive(Debug)]
struct RawQuery {
    items: Vec<RawItem>,
    from: RawPath,
    conds: Vec<RawCond>,
    order_by: Option<(RawPath, bool)>,
    limit: Option<usize>,
}

struct Parser<'q> {
    query: &'q str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // `lex` always ends with `End`, and `bump` never moves past it.
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[self.at.min(last)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.tok != Tok::End {
            self.at += 1;
        }
        token
    }

    fn unexpected(&self, token: &Token) -> SoqlError {
        positioned(
            self.query,
            token.pos,
            "MALFORMED_QUERY",
            &format!("unexpected token: '{}'", token.text),
        )
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SoqlError> {
        if self.is_keyword(keyword) {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(&self.peek().clone()))
        }
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), SoqlError> {
        if &self.peek().tok == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(&self.peek().clone()))
        }
    }

    fn path(&mut self) -> Result<RawPath, SoqlError> {
        let token = self.bump();
        match token.tok {
            Tok::Ident(text) if !is_reserved(&text) => Ok(RawPath {
                text,
                pos: token.pos,
            }),
            _ => Err(self.unexpected(&token)),
        }
    }

    fn literal(&mut self) -> Result<(Literal, usize), SoqlError> {
        let token = self.bump();
        let literal = match &token.tok {
            Tok::Str(s) => Literal::Str(s.clone()),
            Tok::Num(n) => Literal::Num(*n),
            Tok::Ident(w) if w.eq_ignore_ascii_case("null") => Literal::Null,
            Tok::Ident(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Tok::Ident(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.unexpected(&token)),
        };
        Ok((literal, token.pos))
    }

    fn query(&mut self, nested: bool) -> Result<RawQuery, SoqlError> {
        self.expect_keyword("SELECT")?;
        let mut items = Vec::new();
        loop {
            if self.peek().tok == Tok::LParen && !nested {
                let pos = self.bump().pos;
                let sub = self.query(true)?;
                self.expect(&Tok::RParen)?;
                items.push(RawItem::Sub(Box::new(sub), pos));
            } else {
                items.push(RawItem::Path(self.path()?));
            }
            if self.peek().tok == Tok::Comma {
                self.bump();
            } else {
                break;
            }
        }
        self.expect_keyword("FROM")?;
        // Object names may collide with keywords (`Order`), so any word is taken here.
        let token = self.bump();
        let from = match token.tok {
            Tok::Ident(text) => RawPath {
                text,
                pos: token.pos,
            },
            _ => return Err(self.unexpected(&token)),
        };
        let mut conds = Vec::new();
        if self.is_keyword("WHERE") {
            self.bump();
            loop {
                conds.push(self.condition()?);
                if self.is_keyword("AND") {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        let mut order_by = None;
        if self.is_keyword("ORDER") {
            self.bump();
            self.expect_keyword("BY")?;
            let path = self.path()?;
            let descending = if self.is_keyword("DESC") {
                self.bump();
                true
            } else {
                if self.is_keyword("ASC") {
                    self.bump();
                }
                false
            };
            order_by = Some((path, descending));
        }
        let mut limit = None;
        if self.is_keyword("LIMIT") {
            self.bump();
            let token = self.bump();
            limit = match token.tok {
                Tok::Num(n) if n >= 0.0 && n.fract() == 0.0 && n <= 50_000.0 =>
                {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Some(n as usize)
                }
                _ => return Err(self.unexpected(&token)),
            };
        }
        let next = self.peek().clone();
        let at_end = if nested {
            next.tok == Tok::RParen
        } else {
            next.tok == Tok::End
        };
        if at_end {
            Ok(RawQuery {
                items,
                from,
                conds,
                order_by,
                limit,
            })
        } else {
            Err(self.unexpected(&next))
        }
    }

    fn condition(&mut self) -> Result<RawCond, SoqlError> {
        let path = self.path()?;
        if self.peek().tok == Tok::Eq {
            self.bump();
            let value = self.literal()?;
            return Ok(RawCond {
                path,
                values: vec![value],
            });
        }
        self.expect_keyword("IN")?;
        self.expect(&Tok::LParen)?;
        let mut values = vec![self.literal()?];
        while self.peek().tok == Tok::Comma {
            self.bump();
            values.push(self.literal()?);
        }
        self.expect(&Tok::RParen)?;
        Ok(RawCond { path, values })
    }
}

fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "select", "from", "where", "and", "or", "not", "limit", "order", "by", "in", "null",
        "true", "false", "like", "asc", "desc", "group", "having", "offset",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

/// A field reached from the queried object, possibly through parent relationships.
#[derive(Debug, Clone)]
struct FieldPath {
    hops: Vec<&'static ParentRel>,
    field: &'static FieldDef,
}

#[derive(Debug)]
enum Item {
    Field(FieldPath),
    Child(ChildQuery),
}

#[derive(Debug)]
struct ChildQuery {
    rel: &'static ChildRel,
    fields: Vec<FieldPath>,
    conds: Vec<Condition>,
    limit: Option<usize>,
}

#[derive(Debug)]
struct Condition {
    path: FieldPath,
    values: Vec<Literal>,
}

/// A parsed and resolved query, ready to run against the store.
#[derive(Debug)]
pub struct Query {
    object: SObject,
    items: Vec<Item>,
    conds: Vec<Condition>,
    order_by: Option<(FieldPath, bool)>,
    limit: Option<usize>,
}

const FIELD_HINT: &str = "If you are attempting to use a custom field, be sure to append the \
'__c' after the custom field name. Please reference your WSDL or the describe call for the \
appropriate names.";
const REL_HINT: &str = "If you are attempting to use a custom relationship, be sure to append the \
'__r' after the custom relationship name. Please reference your WSDL or the describe call for \
the appropriate names.";

struct Resolver<'q> {
    query: &'q str,
}

impl Resolver<'_> {
    fn object(&self, from: &RawPath) -> Result<SObject, SoqlError> {
        SObject::from_name(&from.text).ok_or_else(|| {
            positioned(
                self.query,
                from.pos,
                "INVALID_TYPE",
                &format!(
                    "sObject type '{}' is not supported. If you are attempting to use a custom \
                     object, be sure to append the '__c' after the custom object name. Please \
                     reference your WSDL or the describe call for the appropriate names.",
                    from.text
                ),
            )
        })
    }

    fn path(&self, object: SObject, raw: &RawPath) -> Result<FieldPath, SoqlError> {
        let mut segments: Vec<&str> = raw.text.split('.').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(positioned(
                self.query,
                raw.pos,
                "MALFORMED_QUERY",
                &format!("unexpected token: '{}'", raw.text),
            ));
        }
        // `Order.Id` in a query on Order names the object itself, unless it is a relationship.
        if segments.len() > 1
            && segments[0].eq_ignore_ascii_case(object.name())
            && object.parent(segments[0]).is_none()
        {
            segments.remove(0);
        }
        let Some((last, rels)) = segments.split_last() else {
            return Err(positioned(
                self.query,
                raw.pos,
                "MALFORMED_QUERY",
                "unexpected token: '.'",
            ));
        };
        let mut hops = Vec::new();
        let mut current = object;
        for rel in rels {
            let parent = current.parent(rel).ok_or_else(|| {
                positioned(
                    self.query,
                    raw.pos,
                    "INVALID_FIELD",
                    &format!("Didn't understand relationship '{rel}' in field path. {REL_HINT}"),
                )
            })?;
            hops.push(parent);
            current = parent.target;
        }
        let field = current.field(last).ok_or_else(|| {
            positioned(
                self.query,
                raw.pos,
                "INVALID_FIELD",
                &format!(
                    "No such column '{last}' on entity '{}'. {FIELD_HINT}",
                    current.name()
                ),
            )
        })?;
        Ok(FieldPath { hops, field })
    }

    fn conditions(&self, object: SObject, raw: &[RawCond]) -> Result<Vec<Condition>, SoqlError> {
        raw.iter()
            .map(|cond| {
                let path = self.path(object, &cond.path)?;
                for (literal, pos) in &cond.values {
                    self.check_literal(path.field, literal, *pos)?;
                }
                Ok(Condition {
                    path,
                    values: cond.values.iter().map(|(l, _)| l.clone()).collect(),
                })
            })
            .collect()
    }

    fn check_literal(
        &self,
        field: &FieldDef,
        literal: &Literal,
        pos: usize,
    ) -> Result<(), SoqlError> {
        let mismatch = |ty: &str, quoted: bool| {
            let quotes = if quoted {
                "should be enclosed in quotes"
            } else {
                "should not be enclosed in quotes"
            };
            Err(positioned(
                self.query,
                pos,
                "INVALID_FIELD",
                &format!(
                    "value of filter criterion for field '{}' must be of type {ty} and {quotes}",
                    field.name
                ),
            ))
        };
        match (field.kind, literal) {
            (_, Literal::Null) => Ok(()),
            (FieldKind::Id | FieldKind::Reference, Literal::Str(s)) => {
                if canonical_id(s).is_some() {
                    Ok(())
                } else {
                    Err(positioned(
                        self.query,
                        pos,
                        "INVALID_QUERY_FILTER_OPERATOR",
                        &format!("invalid ID field: {s}"),
                    ))
                }
            }
            (FieldKind::Id | FieldKind::Reference, _) => mismatch("id", true),
            (
                FieldKind::Text(_)
                | FieldKind::Picklist { .. }
                | FieldKind::DateTime
                | FieldKind::Date,
                Literal::Str(_),
            ) => Ok(()),
            (FieldKind::Text(_) | FieldKind::Picklist { .. }, _) => mismatch("string", true),
            // Date literals are unquoted in SOQL; this subset has no date literals.
            (FieldKind::DateTime | FieldKind::Date, _) => mismatch("dateTime", false),
            (FieldKind::Double, Literal::Num(_)) => Ok(()),
            (FieldKind::Double, _) => mismatch("double", false),
            (FieldKind::Boolean, Literal::Bool(_)) => Ok(()),
            (FieldKind::Boolean, _) => mismatch("boolean", false),
        }
    }

    fn query(&self, raw: &RawQuery) -> Result<Query, SoqlError> {
        let object = self.object(&raw.from)?;
        let mut items = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for item in &raw.items {
            match item {
                RawItem::Path(path) => {
                    let resolved = self.path(object, path)?;
                    let key = path_key(&resolved);
                    if seen.contains(&key) {
                        return Err(positioned(
                            self.query,
                            path.pos,
                            "MALFORMED_QUERY",
                            &format!("duplicate field selected: {}", path.text),
                        ));
                    }
                    seen.push(key);
                    items.push(Item::Field(resolved));
                }
                RawItem::Sub(sub, pos) => {
                    let rel = object.child(&sub.from.text).ok_or_else(|| {
                        positioned(
                            self.query,
                            sub.from.pos,
                            "INVALID_TYPE",
                            &format!(
                                "Didn't understand relationship '{}' in FROM part of query call. {REL_HINT}",
                                sub.from.text
                            ),
                        )
                    })?;
                    if sub.order_by.is_some() {
                        return Err(positioned(
                            self.query,
                            *pos,
                            "MALFORMED_QUERY",
                            "unexpected token: 'ORDER'",
                        ));
                    }
                    let fields = sub
                        .items
                        .iter()
                        .map(|i| match i {
                            RawItem::Path(p) => self.path(rel.child, p),
                            RawItem::Sub(_, pos) => Err(positioned(
                                self.query,
                                *pos,
                                "MALFORMED_QUERY",
                                "unexpected token: '('",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let conds = self.conditions(rel.child, &sub.conds)?;
                    items.push(Item::Child(ChildQuery {
                        rel,
                        fields,
                        conds,
                        limit: sub.limit,
                    }));
                }
            }
        }
        let conds = self.conditions(object, &raw.conds)?;
        let order_by = match &raw.order_by {
            Some((path, desc)) => Some((self.path(object, path)?, *desc)),
            None => None,
        };
        Ok(Query {
            object,
            items,
            conds,
            order_by,
            limit: raw.limit,
        })
    }
}

fn path_key(path: &FieldPath) -> String {
    let mut key: Vec<&str> = path.hops.iter().map(|h| h.name).collect();
    key.push(path.field.name);
    key.join(".")
}

/// Parses and resolves a query.
pub fn parse(query: &str) -> Result<Query, SoqlError> {
    let tokens = lex(query)?;
    let raw = Parser {
        query,
        tokens,
        at: 0,
    }
    .query(false)?;
    Resolver { query }.query(&raw)
}

fn follow<'s>(store: &'s Store, record: &'s Record, hops: &[&ParentRel]) -> Option<&'s Record> {
    let mut current = record;
    for hop in hops {
        let id = current.get(hop.via_field).as_str()?;
        current = store.get(id).filter(|r| r.object == hop.target)?;
    }
    Some(current)
}

fn value_at(store: &Store, record: &Record, path: &FieldPath) -> Value {
    follow(store, record, &path.hops).map_or(Value::Null, |r| r.get(path.field.name).clone())
}

fn literal_matches(field: &FieldDef, actual: &Value, literal: &Literal) -> bool {
    match (literal, actual) {
        (Literal::Null, actual) => actual.is_null(),
        (_, Value::Null) => false,
        (Literal::Str(s), Value::String(a)) => match field.kind {
            FieldKind::Id | FieldKind::Reference => canonical_id(s) == canonical_id(a),
            // Text comparisons in SOQL ignore case.
            _ => s.to_lowercase() == a.to_lowercase(),
        },
        (Literal::Num(n), Value::Number(a)) => a.as_f64() == Some(*n),
        (Literal::Bool(b), Value::Bool(a)) => a == b,
        _ => false,
    }
}

fn matches_all(store: &Store, record: &Record, conds: &[Condition]) -> bool {
    conds.iter().all(|cond| {
        let actual = value_at(store, record, &cond.path);
        cond.values
            .iter()
            .any(|lit| literal_matches(cond.path.field, &actual, lit))
    })
}

fn attributes(object: SObject, id: &str, version: &str) -> Value {
    json!({ "type": object.name(), "url": format!("/services/data/{version}/sobjects/{}/{id}", object.name()) })
}

/// Writes one selected field into `out`, nesting parent relationships as Salesforce does.
fn put_path(
    out: &mut Map<String, Value>,
    store: &Store,
    record: &Record,
    hops: &[&ParentRel],
    field: &FieldDef,
    version: &str,
) {
    let Some((hop, rest)) = hops.split_first() else {
        out.insert(field.name.to_owned(), record.get(field.name).clone());
        return;
    };
    let parent = record
        .get(hop.via_field)
        .as_str()
        .and_then(|id| store.get(id))
        .filter(|r| r.object == hop.target);
    match parent {
        None => {
            out.entry(hop.name).or_insert(Value::Null);
        }
        Some(parent) => {
            let slot = out.entry(hop.name).or_insert_with(
                || json!({ "attributes": attributes(hop.target, parent.id(), version) }),
            );
            if let Value::Object(nested) = slot {
                put_path(nested, store, parent, rest, field, version);
            }
        }
    }
}

fn render(
    store: &Store,
    record: &Record,
    fields: &[&FieldPath],
    version: &str,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "attributes".into(),
        attributes(record.object, record.id(), version),
    );
    for path in fields {
        put_path(&mut out, store, record, &path.hops, path.field, version);
    }
    out
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        // Nulls sort first in ascending order, as in SOQL's default.
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Runs a query; `version` (`v62.0`) goes into the records' `attributes.url`.
pub fn execute(store: &Store, query: &Query, version: &str) -> Value {
    // Filters on the id (or an item's order) are the hot path: answer them without a scan.
    let id_filter = query.conds.iter().find_map(|c| {
        match (
            c.path.hops.is_empty(),
            c.path.field.kind,
            c.values.as_slice(),
        ) {
            (true, FieldKind::Id, [Literal::Str(id)]) => Some(id.as_str()),
            _ => None,
        }
    });
    // `Id IN (...)` (the provisioner's batched Order read) is looked up id by id too: a scan of
    // every record per query would make the simulator the bottleneck of a large backlog.
    let id_list = query.conds.iter().find_map(|c| {
        if !c.path.hops.is_empty() || c.path.field.kind != FieldKind::Id || c.values.len() < 2 {
            return None;
        }
        c.values
            .iter()
            .map(|v| match v {
                Literal::Str(id) => Some(id.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
    });
    let order_filter = (query.object == SObject::OrderItem)
        .then(|| {
            query.conds.iter().find_map(|c| {
                match (
                    c.path.hops.is_empty(),
                    c.path.field.name,
                    c.values.as_slice(),
                ) {
                    (true, "OrderId", [Literal::Str(id)]) => Some(id.as_str()),
                    _ => None,
                }
            })
        })
        .flatten();
    let candidates: Vec<&Record> = if let Some(id) = id_filter {
        store
            .get(id)
            .filter(|r| r.object == query.object)
            .into_iter()
            .collect()
    } else if let Some(ids) = id_list {
        let mut found: Vec<&Record> = Vec::with_capacity(ids.len());
        for record in ids.into_iter().filter_map(|id| store.get(id)) {
            // Two spellings (15 and 18 characters) of one id name one record.
            if record.object == query.object && !found.iter().any(|r| std::ptr::eq(*r, record)) {
                found.push(record);
            }
        }
        found
    } else if let Some(order_id) = order_filter {
        store.items_of(order_id).collect()
    } else {
        store.all(query.object).collect()
    };
    let mut selected: Vec<&Record> = candidates
        .into_iter()
        .filter(|r| matches_all(store, r, &query.conds))
        .collect();
    if let Some((path, descending)) = &query.order_by {
        selected.sort_by(|a, b| {
            let ord = compare(&value_at(store, a, path), &value_at(store, b, path));
            if *descending {
                ord.reverse()
            } else {
                ord
            }
        });
    }
    if let Some(limit) = query.limit {
        selected.truncate(limit);
    }
    let fields: Vec<&FieldPath> = query
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Field(f) => Some(f),
            Item::Child(_) => None,
        })
        .collect();
    let records: Vec<Value> = selected
        .iter()
        .map(|record| {
            let mut out = render(store, record, &fields, version);
            for item in &query.items {
                if let Item::Child(child) = item {
                    out.insert(
                        child.rel.name.to_owned(),
                        children(store, record, child, version),
                    );
                }
            }
            Value::Object(out)
        })
        .collect();
    json!({ "totalSize": records.len(), "done": true, "records": records })
}

/// A child subquery's result: `null` when there are no rows, as Salesforce answers.
fn children(store: &Store, parent: &Record, child: &ChildQuery, version: &str) -> Value {
    let candidates: Vec<&Record> =
        if child.rel.child == SObject::OrderItem && child.rel.via_field == "OrderId" {
            store.items_of(parent.id()).collect()
        } else {
            store
                .all(child.rel.child)
                .filter(|r| {
                    r.get(child.rel.via_field)
                        .as_str()
                        .and_then(canonical_id)
                        .as_deref()
                        == Some(parent.id())
                })
                .collect()
        };
    let mut rows: Vec<&Record> = candidates
        .into_iter()
        .filter(|r| matches_all(store, r, &child.conds))
        .collect();
    if let Some(limit) = child.limit {
        rows.truncate(limit);
    }
    if rows.is_empty() {
        return Value::Null;
    }
    let fields: Vec<&FieldPath> = child.fields.iter().collect();
    let records: Vec<Value> = rows
        .iter()
        .map(|r| Value::Object(render(store, r, &fields, version)))
        .collect();
    json!({ "totalSize": records.len(), "done": true, "records": records })
}

impl Query {
    pub fn object(&self) -> SObject {
        self.object
    }

    /// The child relationships the query selects (`OrderItems`), whose results may be paged.
    pub fn child_relationships(&self) -> Vec<&'static str> {
        self.items
            .iter()
            .filter_map(|item| match item {
                Item::Child(child) => Some(child.rel.name),
                Item::Field(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> SoqlError {
        parse(q).unwrap_err()
    }

    #[test]
    fn contract_queries_parse() {
        let order = messages::salesforce_id::to_18("801Sm0000000001");
        parse(&format!("SELECT Id, AccountId, Status, Activation_Status__c, WHMCS_Order_ID__c, Account.WH_Account__c FROM Order WHERE Id = '{order}'")).unwrap();
        parse("select id, quantity, product2.name, Product2.WH_Product_ID__c, Product2.Billing_Cycle__c from orderitem where orderid = '801Sm0000000001' limit 200").unwrap();
        let q = parse("SELECT Id, (SELECT Id, Quantity, Product2.Name FROM OrderItems) FROM Order WHERE Id IN ('801Sm0000000001', '801Sm0000000002') ORDER BY CreatedDate DESC LIMIT 5").unwrap();
        assert_eq!(q.object(), SObject::Order);
    }

    #[test]
    fn errors_are_typed_and_positioned() {
        let e = err("SELECT Id, Foo__c FROM Order");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(
            e.message
                .contains("No such column 'Foo__c' on entity 'Order'"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("ERROR at Row:1:Column:12"),
            "{}",
            e.message
        );
        assert_eq!(err("SELECT Id FROM Widget__c").code, "INVALID_TYPE");
        assert_eq!(
            err("SELECT Id, Acount.Name FROM Order").code,
            "INVALID_FIELD"
        );
        assert_eq!(err("SELECT Id FROM Order WHERE").code, "MALFORMED_QUERY");
        assert_eq!(
            err("SELECT Id FROM Order WHERE Id = 'abc").code,
            "MALFORMED_QUERY"
        );
        assert_eq!(err("SELECT Id, Id FROM Order").code, "MALFORMED_QUERY");
        assert_eq!(err("SELECT Id FROM Order LIMIT -1").code, "MALFORMED_QUERY");
        assert_eq!(
            err("SELECT Id, (SELECT Id FROM Nope) FROM Order").code,
            "INVALID_TYPE"
        );
        assert_eq!(
            err("SELECT Id FROM Order WHERE Status = 5").code,
            "INVALID_FIELD"
        );
    }

    #[test]
    fn injection_attempts_are_rejected() {
        for q in [
            "SELECT Id FROM Order WHERE Id = '' OR Id != ''",
            "SELECT Id FROM Order WHERE Id = '801Sm0000000001' OR Name = 'x'",
            "SELECT Id FROM Order WHERE Status = 'Draft'; DELETE",
            "SELECT Id FROM Order WHERE Status = 'Draft' --'",
        ] {
            assert_eq!(err(q).code, "MALFORMED_QUERY", "{q}");
        }
        // An escaped quote stays inside the literal: for an id filter it is not an id.
        let e = err(r"SELECT Id FROM Order WHERE Id = '801\' OR Id != \''");
        assert_eq!(e.code, "INVALID_QUERY_FILTER_OPERATOR");
        // ... and for a text filter it is simply a value that matches nothing.
        parse(r"SELECT Id FROM Order WHERE Status = 'Draft\' OR Status != \''").unwrap();
    }
}
