//! JSON messages → columns, flattened the way `pandas.json_normalize` does
//! (`{"event_param":{"user_id":…}}` becomes the column `event_param.user_id`).
//!
//! Messages go straight into typed column builders, without a
//! `serde_json::Value` per message, by the fastest of three readers that can
//! read them: a [`Shape`] learned from the messages before (one comparison per
//! run of keys), a hand [`Scan`] of the common JSON, or serde_json, which reads
//! everything else and words the errors. A test holds the three to the same
//! rows, columns and errors. Types are inferred
//! from the rows of one file and widen on conflict: Int64 + Float64 → Float64;
//! anything mixed with text or booleans → Utf8 (the JSON text of the value).
//! Arrays are kept as their JSON text. Nothing is rejected for its type, so a
//! file's schema depends only on the rows in it; readers widen across files the
//! same way (see `kpipe-query`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::ArrayRef;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// One column's values so far, in the narrowest type that holds them all.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(TextValues),
}

/// Strings laid out as Arrow keeps them (one buffer, offsets, validity), so a
/// value costs a copy and no allocation of its own.
#[derive(Debug, Clone, PartialEq)]
struct TextValues {
    data: String,
    /// `ends[i]` is where value `i` ends in `data`; `ends[0]` is 0.
    ends: Vec<i32>,
    valid: Vec<bool>,
}

impl Default for TextValues {
    fn default() -> Self {
        TextValues::with_capacity(0, 0)
    }
}

impl TextValues {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut ends = Vec::with_capacity(rows + 1);
        ends.push(0);
        TextValues {
            data: String::with_capacity(bytes),
            ends,
            valid: Vec::with_capacity(rows),
        }
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    fn push(&mut self, value: Option<&str>) {
        if let Some(text) = value {
            self.data.push_str(text);
        }
        // Offsets are i32 in Arrow's Utf8; the sink caps a flush well below 2 GiB.
        self.ends.push(self.data.len() as i32);
        self.valid.push(value.is_some());
    }

    fn pad(&mut self, len: usize) {
        while self.len() < len {
            self.push(None);
        }
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.data.truncate(self.ends[len] as usize);
            self.ends.truncate(len + 1);
            self.valid.truncate(len);
        }
    }

    fn into_array(self) -> arrow_array::StringArray {
        let nulls = self
            .valid
            .contains(&false)
            .then(|| arrow_buffer::NullBuffer::from(self.valid));
        arrow_array::StringArray::new(
            arrow_buffer::OffsetBuffer::new(self.ends.into()),
            self.data.into_bytes().into(),
            nulls,
        )
    }
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    fn pad(&mut self, len: usize) {
        match self {
            Values::Int(v) => v.resize(len, None),
            Values::Float(v) => v.resize(len, None),
            Values::Bool(v) => v.resize(len, None),
            Values::Text(v) => v.pad(len),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Values::Int(v) => v.truncate(len),
            Values::Float(v) => v.truncate(len),
            Values::Bool(v) => v.truncate(len),
            Values::Text(v) => v.truncate(len),
        }
    }

    /// The same values as text (a column widening to Utf8).
    fn to_text(&self) -> TextValues {
        let mut text = TextValues::default();
        let mut push = |value: Option<String>| text.push(value.as_deref());
        match self {
            Values::Int(v) => v.iter().for_each(|x| push(x.map(|n| n.to_string()))),
            Values::Float(v) => v.iter().for_each(|x| push(x.map(float_text))),
            Values::Bool(v) => v.iter().for_each(|x| push(x.map(|b| b.to_string()))),
            Values::Text(v) => return v.clone(),
        }
        text
    }

    fn into_array(self) -> ArrayRef {
        match self {
            Values::Int(v) => Arc::new(v.into_iter().collect::<arrow_array::Int64Array>()),
            Values::Float(v) => Arc::new(v.into_iter().collect::<arrow_array::Float64Array>()),
            Values::Bool(v) => Arc::new(v.into_iter().collect::<arrow_array::BooleanArray>()),
            Values::Text(v) => Arc::new(v.into_array()),
        }
    }
}

fn float_text(f: f64) -> String {
    serde_json::Number::from_f64(f).map_or_else(|| "null".to_string(), |n| n.to_string())
}

/// A scalar as it came out of the JSON (text borrowed from the message when it can be).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(Cow<'a, str>),
}

impl Scalar<'_> {
    fn into_owned(self) -> Scalar<'static> {
        match self {
            Scalar::Int(n) => Scalar::Int(n),
            Scalar::Float(f) => Scalar::Float(f),
            Scalar::Bool(b) => Scalar::Bool(b),
            Scalar::Text(t) => Scalar::Text(Cow::Owned(t.into_owned())),
        }
    }
}

/// Columns of flattened rows; one builder per output file.
#[derive(Debug, Default)]
pub struct Columns {
    names: Vec<String>,
    values: Vec<Values>,
    index: HashMap<String, usize>,
    rows: usize,
    /// Where the next field of a row is expected: messages of one topic list their
    /// fields in the same order, so this usually spares the hash lookup.
    cursor: usize,
    /// The column of the field `append_row` captures, once it exists.
    capture_column: Option<usize>,
    /// Rows a new column makes room for at once (growing a column copies it).
    capacity: usize,
    /// The layout of recent messages, for reading the next ones without paths.
    shape: Shape,
    /// Columns the last message widened, as they were before it, so that a
    /// message rejected after all leaves the column types as it found them.
    widened: Vec<(usize, Values)>,
}

impl Columns {
    /// Columns expecting about `rows` rows.
    pub fn with_capacity(rows: usize) -> Columns {
        Columns {
            capacity: rows,
            ..Columns::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The column named `name`, created (typed after `value`) when it is new.
    fn column(&mut self, name: &str, value: &Scalar<'_>, capture: Option<&str>) -> usize {
        let expected = self
            .names
            .get(self.cursor)
            .is_some_and(|n| n == name)
            .then_some(self.cursor);
        let i = match expected.or_else(|| self.index.get(name).copied()) {
            Some(i) => i,
            None => {
                let i = self.values.len();
                self.names.push(name.to_string());
                let rows = self.capacity;
                self.values.push(match value {
                    Scalar::Int(_) => Values::Int(Vec::with_capacity(rows)),
                    Scalar::Float(_) => Values::Float(Vec::with_capacity(rows)),
                    Scalar::Bool(_) => Values::Bool(Vec::with_capacity(rows)),
                    // Room for values as long as this one (and a little more),
                    // so that filling the column seldom copies it.
                    Scalar::Text(t) => {
                        Values::Text(TextValues::with_capacity(rows, rows * (t.len() + 8)))
                    }
                });
                self.index.insert(name.to_string(), i);
                if capture == Some(name) {
                    self.capture_column = Some(i);
                }
                i
            }
        };
        self.cursor = i + 1;
        i
    }

    /// Sets column `i` in the row being built, widening the column when needed.
    fn set(&mut self, i: usize, value: Scalar<'_>) {
        let row = self.rows;
        let column = &mut self.values[i];
        if column.len() != row {
            // A repeated key in one object: the last value wins, as in json_normalize.
            column.truncate(row);
            column.pad(row);
        }
        match (&mut *column, value) {
            (Values::Int(v), Scalar::Int(n)) => v.push(Some(n)),
            (Values::Float(v), Scalar::Float(f)) => v.push(Some(f)),
            (Values::Float(v), Scalar::Int(n)) => v.push(Some(n as f64)),
            (Values::Bool(v), Scalar::Bool(b)) => v.push(Some(b)),
            (Values::Int(v), Scalar::Float(f)) => {
                let mut widened: Vec<Option<f64>> = v.iter().map(|x| x.map(|n| n as f64)).collect();
                widened.push(Some(f));
                let before = std::mem::replace(column, Values::Float(widened));
                self.widened.push((i, before));
            }
            (Values::Text(v), Scalar::Text(t)) => v.push(Some(&t)),
            (Values::Text(v), other) => v.push(Some(&scalar_text(other))),
            (current, other) => {
                let mut widened = current.to_text();
                widened.push(Some(&scalar_text(other)));
                let before = std::mem::replace(column, Values::Text(widened));
                self.widened.push((i, before));
            }
        }
    }

    /// Called before a message is read: forgets what the last one widened.
    fn start_row(&mut self) {
        self.widened.clear();
    }

    /// Puts back the columns the current message widened (its values go with them).
    fn unwiden(&mut self) {
        for (i, before) in self.widened.drain(..).rev() {
            if let Some(column) = self.values.get_mut(i) {
                *column = before;
            }
        }
    }

    fn end_row(&mut self) {
        self.rows += 1;
        self.cursor = 0;
    }

    /// Forgets the half-built row of a message that turned out to be malformed,
    /// including columns that only it had started (`width` = columns before it).
    fn discard_row(&mut self, width: usize) {
        self.unwiden();
        for name in self.names.drain(width..) {
            self.index.remove(&name);
        }
        self.values.truncate(width);
        if self.capture_column.is_some_and(|i| i >= width) {
            self.capture_column = None;
        }
        for column in &mut self.values {
            column.truncate(self.rows);
        }
        self.cursor = 0;
    }

    /// Takes back the last finished row (its message was rejected after parsing).
    /// Columns only it had stay, empty, and are dropped when the file is written.
    pub fn remove_last_row(&mut self) {
        self.rows -= 1;
        self.unwiden();
        for column in &mut self.values {
            column.truncate(self.rows);
        }
    }

    /// The finished columns, in first-seen order, each `rows` long.
    pub fn finish(self) -> Vec<(String, ArrayRef)> {
        let rows = self.rows;
        self.names
            .into_iter()
            .zip(self.values)
            .map(|(name, mut values)| {
                values.pad(rows);
                (name, values.into_array())
            })
            .collect()
    }
}

/// The layout most messages of a topic share (one producer writes the same
/// keys in the same order with the same spacing), learned from a scanned
/// message: the text between its scalars ("gaps": keys, punctuation, nested
/// braces) and the column each scalar went to. A message that matches every
/// gap byte for byte, with a scalar between each two, is valid JSON of the
/// same structure, so its values go to the same columns: reading it costs a
/// comparison per gap instead of building and looking up each dotted path.
#[derive(Debug, Default)]
struct Shape {
    /// Gap `k` ends at `gap_ends[k]` and starts where gap `k - 1` ends; there
    /// is one gap more than scalars.
    gaps: Vec<u8>,
    gap_ends: Vec<usize>,
    /// Each scalar's column; None where the learned message had a null.
    columns: Vec<Option<usize>>,
    /// A message's values, kept until all of it has matched (reused).
    cells: Vec<Cell>,
    /// The scan's notes, reused.
    marks: Vec<Mark>,
    /// Messages to scan before the shape is tried again: misses back off, so
    /// a topic of mixed layouts costs few failed tries.
    skip: u32,
    penalty: u32,
}

/// Where a scanned message had a scalar, and its column (none for a null).
#[derive(Debug, Clone, Copy)]
struct Mark {
    start: usize,
    end: usize,
    column: Option<usize>,
}

/// A scalar read against a [`Shape`] (text as its place in the message).
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    Text(usize, usize),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Shape {
    fn ready(&self) -> bool {
        self.skip == 0 && !self.gap_ends.is_empty()
    }

    /// Reads `json`'s scalars into `cells` if it has this shape.
    fn read(&mut self, json: &str) -> Option<()> {
        let mut scan = Scan::new(json, Vec::new());
        self.cells.clear();
        let mut gap_start = 0;
        for (k, &gap_end) in self.gap_ends.iter().enumerate() {
            let gap = &self.gaps[gap_start..gap_end];
            gap_start = gap_end;
            let end = scan.at + gap.len();
            if scan.bytes.get(scan.at..end)? != gap {
                return None;
            }
            scan.at = end;
            let Some(&column) = self.columns.get(k) else {
                break;
            };
            let start = scan.at + 1;
            let cell = match scan.scalar()? {
                None => Cell::Null,
                Some(_) if column.is_none() => return None,
                Some(Scalar::Text(_)) => Cell::Text(start, scan.at - 1),
                Some(Scalar::Int(n)) => Cell::Int(n),
                Some(Scalar::Float(f)) => Cell::Float(f),
                Some(Scalar::Bool(b)) => Cell::Bool(b),
            };
            self.cells.push(cell);
        }
        (scan.at == json.len()).then_some(())
    }

    fn missed(&mut self) {
        self.penalty = (self.penalty * 2).clamp(1, 64);
        // One more, so the message that missed is not the one learned.
        self.skip = self.penalty + 1;
    }

    /// After the scan read a message: learns its shape when the next one is
    /// to be tried.
    fn scanned(&mut self, json: &[u8], marks: Vec<Mark>) {
        self.skip = self.skip.saturating_sub(1);
        if self.skip == 0 {
            self.gaps.clear();
            self.gap_ends.clear();
            self.columns.clear();
            let mut from = 0;
            for mark in &marks {
                self.gaps.extend_from_slice(&json[from..mark.start]);
                self.gap_ends.push(self.gaps.len());
                self.columns.push(mark.column);
                from = mark.end;
            }
            self.gaps.extend_from_slice(&json[from..]);
            self.gap_ends.push(self.gaps.len());
        }
        self.marks = marks;
    }
}

impl Columns {
    /// Appends `json` as a row if it has the [`Shape`] of the messages before
    /// it, returning the captured field's value; None leaves it to the scan.
    fn append_shaped_row(&mut self, json: &str) -> Option<Option<Scalar<'static>>> {
        if !self.shape.ready() {
            return None;
        }
        if self.shape.read(json).is_none() {
            self.shape.missed();
            return None;
        }
        self.shape.penalty = 0;
        // Taken out while `set` borrows the columns; put back below.
        let shape = std::mem::take(&mut self.shape);
        let mut captured = None;
        for (&cell, &column) in shape.cells.iter().zip(&shape.columns) {
            let Some(column) = column else {
                continue;
            };
            let value = match cell {
                Cell::Null => continue,
                Cell::Text(start, end) => Scalar::Text(Cow::Borrowed(&json[start..end])),
                Cell::Int(n) => Scalar::Int(n),
                Cell::Float(f) => Scalar::Float(f),
                Cell::Bool(b) => Scalar::Bool(b),
            };
            if self.capture_column == Some(column) {
                captured = Some(value.clone().into_owned());
            }
            self.set(column, value);
        }
        self.shape = shape;
        self.end_row();
        Some(captured)
    }
}

fn scalar_text(value: Scalar<'_>) -> Cow<'_, str> {
    match value {
        Scalar::Int(n) => Cow::Owned(n.to_string()),
        Scalar::Float(f) => Cow::Owned(float_text(f)),
        Scalar::Bool(b) => Cow::Owned(b.to_string()),
        Scalar::Text(s) => s,
    }
}

/// Why a message could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Flattens one JSON object into `columns` as a new row. `capture` names a
/// dotted field whose scalar value is returned (the event's time field).
pub fn append_row(
    columns: &mut Columns,
    json: &[u8],
    capture: Option<&str>,
) -> Result<Option<Scalar<'static>>, RowError> {
    // One vectorised UTF-8 check of the whole message is cheaper than serde_json's
    // check of each string in it.
    let json = simdutf8::basic::from_utf8(json)
        .map_err(|_| RowError("message is not valid UTF-8".to_string()))?;
    columns.start_row();
    if let Some(captured) = columns.append_shaped_row(json) {
        return Ok(captured);
    }
    let width = columns.values.len();
    let mut scan = Scan::new(json, std::mem::take(&mut columns.shape.marks));
    let mut leaves = Leaves::new(columns, capture);
    let scanned = scan.row(&mut leaves).is_some();
    let captured = leaves.captured;
    if scanned {
        columns.end_row();
        columns.shape.scanned(json.as_bytes(), scan.marks);
        return Ok(captured);
    }
    columns.shape.marks = scan.marks;
    columns.discard_row(width);
    append_parsed_row(columns, json, capture)
}

/// [`append_row`] by serde_json: any JSON, and the error that says what is wrong.
fn append_parsed_row(
    columns: &mut Columns,
    json: &str,
    capture: Option<&str>,
) -> Result<Option<Scalar<'static>>, RowError> {
    columns.start_row();
    let width = columns.values.len();
    let mut leaves = Leaves::new(columns, capture);
    let mut de = serde_json::Deserializer::from_str(json);
    let result = RowSeed {
        leaves: &mut leaves,
        top: true,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match result {
        Ok(()) => {
            let captured = leaves.captured;
            columns.end_row();
            Ok(captured)
        }
        Err(e) => {
            columns.discard_row(width);
            Err(RowError(if e.to_string().contains("not a JSON object") {
                "message is not a JSON object".to_string()
            } else {
                format!("message is not valid JSON: {e}")
            }))
        }
    }
}

/// Where a row's leaves go, whichever way the message is read.
struct Leaves<'a> {
    columns: &'a mut Columns,
    /// The dotted path of the leaf being read.
    path: String,
    /// The field whose value is captured (the event's time field).
    capture: Option<&'a str>,
    captured: Option<Scalar<'static>>,
}

impl<'a> Leaves<'a> {
    fn new(columns: &'a mut Columns, capture: Option<&'a str>) -> Self {
        Leaves {
            columns,
            path: String::new(),
            capture,
            captured: None,
        }
    }

    /// Sets the leaf at `path` in the row being built, and captures it when
    /// it is the field asked for.
    fn put(&mut self, value: Scalar<'_>) -> usize {
        let i = self.columns.column(&self.path, &value, self.capture);
        if self.columns.capture_column == Some(i) {
            self.captured = Some(value.clone().into_owned());
        }
        self.columns.set(i, value);
        i
    }
}

/// The common message scanned by hand, for a third of the sink's CPU that
/// serde_json's general machinery cost: objects nested in objects, strings
/// without escapes, numbers that fit an i64 or a finite f64, booleans and
/// nulls. Anything else (an array, an escape, `-0`, a huge integer, deep
/// nesting, an error) makes it give up with None, and the caller takes the
/// message back and parses it with serde_json. What it accepts is valid JSON
/// read to the same values.
struct Scan<'j> {
    text: &'j str,
    bytes: &'j [u8],
    at: usize,
    /// Where each scalar was, for learning the message's [`Shape`].
    marks: Vec<Mark>,
}

/// serde_json's own nesting limit.
const MAX_DEPTH: usize = 128;

impl<'j> Scan<'j> {
    /// A scan of `text` that notes its scalars in `marks` (emptied first).
    fn new(text: &'j str, mut marks: Vec<Mark>) -> Self {
        marks.clear();
        Scan {
            text,
            bytes: text.as_bytes(),
            at: 0,
            marks,
        }
    }

    fn row(&mut self, leaves: &mut Leaves<'_>) -> Option<()> {
        self.whitespace();
        self.expect(b'{')?;
        self.object(leaves, 1)?;
        self.whitespace();
        (self.at == self.bytes.len()).then_some(())
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// The members of an object whose `{` is read.
    fn object(&mut self, leaves: &mut Leaves<'_>, depth: usize) -> Option<()> {
        self.whitespace();
        if self.expect(b'}').is_some() {
            return Some(());
        }
        let parent = leaves.path.len();
        loop {
            self.whitespace();
            self.expect(b'"')?;
            let key = self.string()?;
            if parent > 0 {
                leaves.path.push('.');
            }
            leaves.path.push_str(key);
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let start = self.at;
            if self.bytes.get(self.at) == Some(&b'{') && depth < MAX_DEPTH {
                self.at += 1;
                self.object(leaves, depth + 1)?;
            } else {
                // A null leaves the cell empty, as on serde_json's path.
                let column = self.scalar()?.map(|value| leaves.put(value));
                self.marks.push(Mark {
                    start,
                    end: self.at,
                    column,
                });
            }
            leaves.path.truncate(parent);
            self.whitespace();
            if self.expect(b',').is_none() {
                return self.expect(b'}');
            }
        }
    }

    /// The scalar at the cursor, Some(None) for a null; None for anything
    /// else, or what the scan does not read.
    fn scalar(&mut self) -> Option<Option<Scalar<'j>>> {
        let value = match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                Scalar::Text(Cow::Borrowed(self.string()?))
            }
            b't' => self.literal("true", Scalar::Bool(true))?,
            b'f' => self.literal("false", Scalar::Bool(false))?,
            b'n' => return self.literal("null", None),
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        };
        Some(Some(value))
    }

    /// A string whose `"` is read, up to its closing quote; None at an escape
    /// or a control character.
    fn string(&mut self) -> Option<&'j str> {
        let start = self.at;
        self.skip_plain_words();
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    // Quotes are ASCII, so both ends fall on character boundaries.
                    return Some(&self.text[start..self.at - 1]);
                }
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    /// Skips 8 bytes at a time while none of them is a quote, a backslash or
    /// a control character (a byte at a time cost twice as much).
    fn skip_plain_words(&mut self) {
        const ONES: u64 = u64::from_ne_bytes([1; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let below = |word: u64, byte: u8| word.wrapping_sub(ONES * u64::from(byte)) & !word & HIGH;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            let special = below(word ^ (ONES * u64::from(b'"')), 1)
                | below(word ^ (ONES * u64::from(b'\\')), 1)
                | below(word, 0x20);
            if special != 0 {
                return;
            }
            self.at += 8;
        }
    }

    fn literal<T>(&mut self, word: &str, value: T) -> Option<T> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then(|| {
            self.at = end;
            value
        })
    }

    /// A number as JSON spells it.
    fn number(&mut self) -> Option<Scalar<'j>> {
        let start = self.at;
        let _ = self.expect(b'-');
        match *self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut float = false;
        if self.expect(b'.').is_some() {
            float = true;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            float = true;
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        let text = &self.text[start..self.at];
        if float {
            let f: f64 = text.parse().ok()?;
            f.is_finite().then_some(Scalar::Float(f))
        } else if text == "-0" {
            // serde_json reads it as the float -0.0.
            None
        } else {
            text.parse().ok().map(Scalar::Int)
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

struct RowSeed<'a, 'b> {
    leaves: &'a mut Leaves<'b>,
    /// The message itself, which must be an object (values inside may be anything).
    top: bool,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(ObjectVisitor(self))
    }
}

struct ObjectVisitor<'a, 'b>(RowSeed<'a, 'b>);

impl ObjectVisitor<'_, '_> {
    fn leaf<E>(self, value: Scalar<'_>) -> Result<(), E>
    where
        E: serde::de::Error,
    {
        if self.0.top {
            return Err(E::custom("not a JSON object"));
        }
        self.0.leaves.put(value);
        Ok(())
    }
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let leaves = self.0.leaves;
        let parent = leaves.path.len();
        while map
            .next_key_seed(KeySeed {
                path: &mut leaves.path,
                dot: parent > 0,
            })?
            .is_some()
        {
            map.next_value_seed(RowSeed {
                leaves: &mut *leaves,
                top: false,
            })?;
            leaves.path.truncate(parent);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            items.push(item);
        }
        self.leaf(Scalar::Text(Cow::Owned(
            serde_json::Value::Array(items).to_string(),
        )))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(Scalar::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Scalar::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(n) => self.leaf(Scalar::Int(n)),
            Err(_) => self.leaf(Scalar::Float(v as f64)),
        }
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(Scalar::Float(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<(), E> {
        self.leaf(Scalar::Text(Cow::Owned(v)))
    }
    /// A null leaves the cell empty (the column, if new, waits for a real value).
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        if self.0.top {
            return Err(E::custom("not a JSON object"));
        }
        Ok(())
    }
}

/// Appends an object's key to the dotted path in place: a key costs no
/// allocation of its own (serde's `Cow<str>` would own every key).
struct KeySeed<'b> {
    path: &'b mut String,
    dot: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<(), E> {
        if self.dot {
            self.path.push('.');
        }
        self.path.push_str(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_array::Array;

    type Built = (
        Vec<(String, ArrayRef)>,
        Vec<Result<Option<Scalar<'static>>, RowError>>,
    );

    fn build(lines: &[&str]) -> Built {
        let mut columns = Columns::default();
        let results = lines
            .iter()
            .map(|l| append_row(&mut columns, l.as_bytes(), Some("event_timestamp.ts_ms")))
            .collect();
        (columns.finish(), results)
    }

    #[test]
    fn flattens_nested_objects_with_dotted_names() {
        let (columns, results) = build(&[
            r#"{"event_param":{"event_type_id":1,"user_id":"u1"},"event_timestamp":{"ts":1,"ts_ms":1000}}"#,
            r#"{"event_param":{"event_type_id":2,"user_id":"u2","extra":true},"event_timestamp":{"ts":2,"ts_ms":2000}}"#,
        ]);
        let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_param.event_type_id",
                "event_param.user_id",
                "event_timestamp.ts",
                "event_timestamp.ts_ms",
                "event_param.extra"
            ]
        );
        assert_eq!(results[1], Ok(Some(Scalar::Int(2000))));
        let extra = columns[4].1.as_boolean();
        assert!(extra.is_null(0) && extra.value(1));
        assert_eq!(
            columns[0].1.as_primitive::<Int64Type>().values().to_vec(),
            vec![1, 2]
        );
    }

    #[test]
    fn escaped_keys_are_unescaped_in_column_names() {
        let (columns, _) = build(&[r#"{"a\u002eb":{"c\"d":1}}"#]);
        assert_eq!(columns[0].0, "a.b.c\"d");
    }

    #[test]
    fn types_widen_instead_of_failing() {
        let (columns, _) = build(&[
            r#"{"a":1,"b":1,"c":true}"#,
            r#"{"a":1.5,"b":"x","c":2}"#,
            r#"{"a":null,"d":[1,{"e":2}]}"#,
        ]);
        let a = columns[0].1.as_primitive::<Float64Type>();
        assert_eq!((a.value(0), a.value(1), a.is_null(2)), (1.0, 1.5, true));
        let b = columns[1].1.as_string::<i32>();
        assert_eq!((b.value(0), b.value(1)), ("1", "x"));
        let c = columns[2].1.as_string::<i32>();
        assert_eq!((c.value(0), c.value(1)), ("true", "2"));
        assert_eq!(columns[3].1.as_string::<i32>().value(2), r#"[1,{"e":2}]"#);
    }

    #[test]
    fn the_hand_scan_reads_what_serde_json_reads() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(130), "}".repeat(130));
        let lines = [
            r#"{"event_param":{"event_type_id":3,"user_id":"2f"},"event_timestamp":{"ts":1,"ts_ms":1795385150638}}"#,
            " \t{ \"a\" : 1 , \"b\" :\n{\"c\":\r\"x\"} }\n ",
            r#"{"a":-12,"b":0,"c":1.5,"d":-0.25e-3,"e":1E+2,"f":2e5,"g":true,"h":false,"i":null}"#,
            r#"{"a":"Zoë 😀","b":"","c":{},"d":{"e":{}}}"#,
            r#"{"a":1,"a":"twice","b":{"c":1},"b.c":2}"#,
            r#"{"event_timestamp":{"ts_ms":1.5e12}}"#,
            r#"{"esc":"a\"b","u":"\u00e9"}"#,
            r#"{"list":[1,{"e":2}],"x":1}"#,
            r#"{"minus_zero":-0,"big":18446744073709551615,"bigger":-9223372036854775809}"#,
            r#"{"max":9223372036854775807,"min":-9223372036854775808}"#,
            r#"{"huge":1e400}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":1,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":1}x"#,
            r#"{"a":1}{}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"unterminated}"#,
            r#"{a:1}"#,
            r#"{"a" 1}"#,
            r#"{"#,
            "",
            "null",
            r#""text""#,
            &deep,
        ];
        let scans = |line: &str| {
            let mut scan = Scan::new(line, Vec::new());
            let mut columns = Columns::default();
            scan.row(&mut Leaves::new(&mut columns, None)).is_some()
        };
        let by_hand: Vec<usize> = (0..lines.len()).filter(|&i| scans(lines[i])).collect();
        assert_eq!(
            by_hand,
            [0, 1, 2, 3, 4, 5, 9],
            "the lines the scan reads itself"
        );
        // Escapes, control characters and multi-byte characters at every
        // place of strings read 8 bytes at a time.
        let mut strings = Vec::new();
        for len in 0..20 {
            for at in 0..=len {
                for special in ["\\\"", "\\n", "\t", "\u{1}", "é", "😀", "\""] {
                    let text: String = (0..len)
                        .map(|i| if i == at { special } else { "x" })
                        .collect();
                    strings.push(format!(r#"{{"k{len}_{at}":"{text}","n":1}}"#));
                }
            }
        }
        let mut scanned = Columns::default();
        let mut parsed = Columns::default();
        for line in lines
            .iter()
            .copied()
            .chain(strings.iter().map(String::as_str))
        {
            let by_scan = append_row(&mut scanned, line.as_bytes(), Some("event_timestamp.ts_ms"));
            let by_serde = append_parsed_row(&mut parsed, line, Some("event_timestamp.ts_ms"));
            assert_eq!(by_scan, by_serde, "{line}");
        }
        assert_eq!(scanned.finish(), parsed.finish());
    }

    #[test]
    fn messages_read_by_shape_are_read_as_the_scan_reads_them() {
        // Layouts with slots ($) for values; each line puts one odd value in
        // one slot and reads it right after a line of defaults taught the shape.
        let layouts = [
            (
                r#"{"event_param":{"id":$,"name":$,"flag":$,"score":$,"gone":$},"ts":{"ms":$}}"#,
                ["1", r#""a""#, "true", "1.5", "null", "1795385150638"].as_slice(),
            ),
            (
                r#" { "a" : $ , "a" : $ , "e" : { } } "#,
                ["1", r#""x""#].as_slice(),
            ),
            (r#"{"a":$}"#, ["null"].as_slice()),
        ];
        let odd = [
            "7",
            "-3",
            "-0",
            "0.5e3",
            "1e400",
            "01",
            "1.",
            "18446744073709551615",
            r#""text""#,
            r#""""#,
            r#""Zoë 😀""#,
            r#""esc\"aped""#,
            "\"tab\there\"",
            r#""open"#,
            "true",
            "false",
            "null",
            "nul",
            "{}",
            r#"{"x":1}"#,
            "[1]",
            "",
            " 1",
            "1 ",
            "1,\"b\":2",
        ];
        let fill = |layout: &str, values: &[&str]| {
            let mut parts = layout.split('$');
            let mut line = parts.next().unwrap_or_default().to_string();
            for (part, value) in parts.zip(values) {
                line.push_str(value);
                line.push_str(part);
            }
            line
        };
        let capture = Some("ts.ms");
        let mut shaped = 0;
        for (layout, defaults) in layouts {
            let base = fill(layout, defaults);
            let mut lines: Vec<String> = Vec::new();
            for slot in 0..defaults.len() {
                for value in odd {
                    let mut values = defaults.to_vec();
                    values[slot] = value;
                    lines.push(fill(layout, &values));
                }
            }
            lines.extend([
                format!("{base} "),
                base.replace(':', ": "),
                base[1..].to_string(),
            ]);
            for line in &lines {
                let mut scanned = Columns::default();
                let mut parsed = Columns::default();
                for message in [&base, line] {
                    assert_eq!(
                        append_row(&mut scanned, message.as_bytes(), capture),
                        append_parsed_row(&mut parsed, message, capture),
                        "{message} after {base}"
                    );
                }
                shaped += usize::from(scanned.shape.penalty == 0);
                assert_eq!(scanned.finish(), parsed.finish(), "{line} after {base}");
            }
        }
        // Nine odd values are scalars the shape accepts (7, -3, 0.5e3, three
        // plain strings, true, false, null), in any of the seven slots learned
        // from a scalar; the two slots learned from a null take only null.
        let expected = 7 * 9 + 2;
        assert_eq!(shaped, expected);
    }

    #[test]
    fn a_shape_reads_messages_that_repeat_it_and_backs_off_when_they_do_not() {
        let mut columns = Columns::default();
        let line = |n: usize| format!(r#"{{"a":{n},"b":{{"c":"{n}"}}}}"#);
        append_row(&mut columns, line(0).as_bytes(), None).unwrap();
        assert!(columns.append_shaped_row(&line(1)).is_some());
        assert!(columns
            .append_shaped_row(r#"{"b":{"c":"x"},"a":1}"#)
            .is_none());
        assert!(!columns.shape.ready(), "a miss waits before trying again");
        for n in 2..5 {
            append_row(&mut columns, line(n).as_bytes(), None).unwrap();
        }
        assert!(columns.append_shaped_row(&line(5)).is_some());
        let rows = columns.rows();
        let finished = columns.finish();
        assert_eq!(rows, 6);
        assert_eq!(
            finished[0].1.as_primitive::<Int64Type>().values(),
            &[0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn bad_messages_leave_no_trace() {
        // The second and the last but one would have widened a to text.
        let (columns, results) = build(&[
            r#"{"a":1}"#,
            r#"{"a":"two","b":"#,
            "[1,2]",
            "42",
            r#"{"a":2.5,"b":01}"#,
            r#"{"a":3}"#,
        ]);
        assert!(results[1]
            .as_ref()
            .unwrap_err()
            .0
            .starts_with("message is not valid JSON"));
        assert_eq!(
            results[2].as_ref().unwrap_err().0,
            "message is not a JSON object"
        );
        assert_eq!(
            results[3].as_ref().unwrap_err().0,
            "message is not a JSON object"
        );
        assert!(results[4].is_err());
        assert_eq!(columns.len(), 1, "the torn row's column b must not survive");
        let mut more = Columns::default();
        assert_eq!(
            append_row(&mut more, b"{\"a\":\"\xff\"}", None),
            Err(RowError("message is not valid UTF-8".into()))
        );
        assert_eq!(
            columns[0].1.as_primitive::<Int64Type>().values().to_vec(),
            vec![1, 3]
        );
    }
}
