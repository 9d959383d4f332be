//! Typed values and canonical CSV (DESIGN §2): a streaming RFC 4180 reader
//! that remembers whether each field was quoted, the typing rules that turn
//! a field into NULL / INTEGER / REAL / TEXT, and the canonical writer whose
//! bytes are hashed into output digests.
//!
//! The rules match `examples/oncology/tools/reference_run.py` (`parse_csv`,
//! `type_value`, `canon_field`) byte for byte, because tests compare our
//! tables with its tables:
//!
//! * Typing. An unquoted empty field is NULL, a quoted empty field `""` the
//!   empty string. Otherwise quoting does not matter: `"5"` is INTEGER 5
//!   like `5`. `[+-]?(0|[1-9][0-9]*)` is INTEGER when it fits in i64, and
//!   TEXT when it does not (`9223372036854775808` keeps every digit as text
//!   rather than becoming an inexact REAL); `-0` and `+0` are INTEGER 0 and
//!   `+5` is 5. `[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` with a `.`
//!   or an exponent is REAL when finite (`1e400` overflows and stays TEXT).
//!   So a leading zero keeps text (`007`, `0123`, `-01`, `00.5`), `0.5` is
//!   REAL, and `.5`, `3.`, `inf`, `nan` and `1_000` are TEXT.
//! * Reading. `\n`, `\r\n` and a lone `\r` end a record; a field is quoted
//!   only when its first character is `"`; `""` inside quotes is one `"`;
//!   text after a closing quote is kept (`"ab"c` is `abc`, quoted), as is a
//!   `"` in the middle of an unquoted field. A blank line (one unquoted empty
//!   field) is not a record. The first record is the header.
//! * Writing. NULL is an empty field, the empty string `""`; a field is
//!   quoted only when it holds `,` `"` `\r` or `\n` (spaces are not quoted);
//!   integers in decimal; reals as Python's `repr(float)`: the shortest digits
//!   that read back to the same f64, in positional form with at least one
//!   digit after the point (`3.0`, `0.0001`, `1234567890123456.0`) while the
//!   decimal exponent is in -4..=15, else in exponent form with a signed,
//!   at least two-digit exponent and no `.0` (`1e+16`, `1.5e-05`); `-0.0` is
//!   written `0.0`.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, Write};

/// A typed cell value that owns its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

/// A typed cell value borrowing its text (from a reader's buffer or from
/// SQLite), so that streaming a table allocates nothing per field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s),
        }
    }
}

impl ValueRef<'_> {
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(s) => Value::Text(s.to_string()),
        }
    }
}

/// What a table holds, reported after writing it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableStats {
    pub rows: u64,
    pub columns: Vec<String>,
}

/// A CSV problem. Line numbers are 1-based and name where the record (or
/// the unterminated quote) starts. No message ever quotes a cell value: the
/// data may be PHI.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("line {line}: a quoted field is never closed")]
    UnterminatedQuote { line: u64 },
    #[error("line {line}: the row has {found} fields, the header has {expected}")]
    FieldCount {
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: not valid UTF-8")]
    InvalidUtf8 { line: u64 },
    #[error("the CSV is empty (no header row)")]
    Empty,
    #[error("duplicate column names: {}", .0.join(", "))]
    DuplicateColumns(Vec<String>),
    #[error("a table needs at least one column")]
    NoColumns,
    #[error("row {row}: a real value is not finite (inf or NaN), which CSV cannot hold")]
    NonFinite { row: u64 },
    #[error(
        "row {row}: a one-column table cannot hold a NULL: it would be a blank line, \
         which CSV readers skip (use coalesce() or add a column)"
    )]
    NullOnlyRow { row: u64 },
    #[error("row {row}: {found} values written for {expected} columns")]
    WrongWidth {
        row: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: {message}")]
    Rejected { line: u64, message: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

// ---------------------------------------------------------------------------
// Typing.

/// Types one CSV field by the rules in the module doc.
pub fn type_field(text: &str, quoted: bool) -> ValueRef<'_> {
    let b = text.as_bytes();
    if b.is_empty() {
        return if quoted {
            ValueRef::Text("")
        } else {
            ValueRef::Null
        };
    }
    match number_shape(b) {
        Shape::Integer => match text.parse::<i64>() {
            Ok(i) => ValueRef::Integer(i),
            // Too big for 64 bits: every digit is kept, as text.
            Err(_) => ValueRef::Text(text),
        },
        Shape::Real => match text.parse::<f64>() {
            Ok(r) if r.is_finite() => ValueRef::Real(r),
            _ => ValueRef::Text(text),
        },
        Shape::Text => ValueRef::Text(text),
    }
}

enum Shape {
    Integer,
    Real,
    Text,
}

/// Matches `[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` by hand (the
/// regexes of the reference), which is far cheaper than a regex per field.
fn number_shape(b: &[u8]) -> Shape {
    let n = b.len();
    let mut i = usize::from(matches!(b[0], b'+' | b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            i += 1;
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        _ => return Shape::Text,
    }
    if i == n {
        return Shape::Integer;
    }
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < n && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Shape::Text;
        }
    }
    if i < n && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < n && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let start = i;
        while i < n && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Shape::Text;
        }
    }
    // Anything left over (`007`, `1.5x`) makes it text. Reaching here with
    // nothing left means a `.` or an exponent was seen: a real.
    if i == n { Shape::Real } else { Shape::Text }
}

// ---------------------------------------------------------------------------
// Reading.

/// How a reader treats bytes that Python's text mode would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Bytes as they are: for canonical tables, which must read back to
    /// exactly what was written (a text value may hold `\r`).
    Exact,
    /// For CSV from outside (sources, static tables, command output): a
    /// leading UTF-8 byte order mark is dropped, and `\r\n` or a lone `\r`
    /// inside a quoted field becomes `\n`, as Python's universal newlines do
    /// when the reference opens such a file.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field (after `,` or a record end).
    FieldStart,
    /// In an unquoted field, or after the closing quote of a quoted one.
    Unquoted,
    /// Inside quotes.
    Quoted,
    /// Inside quotes, just after a `"`: an escape or the closing quote.
    QuoteInQuoted,
    /// Inside quotes, just after a `\r`: a `\n` next belongs to it.
    QuotedAfterCr,
    /// A record ended with `\r`: a `\n` next belongs to it.
    AfterCr,
}

/// The bytes that end a run of plain bytes, inside quotes or outside.
const fn special_table(quoted: bool) -> [bool; 256] {
    let mut t = [false; 256];
    t[b'\r' as usize] = true;
    t[b'\n' as usize] = true;
    if quoted {
        t[b'"' as usize] = true;
    } else {
        t[b',' as usize] = true;
    }
    t
}
static UNQUOTED_STOP: [bool; 256] = special_table(false);
static QUOTED_STOP: [bool; 256] = special_table(true);

/// A streaming RFC 4180 reader. Each record's fields are stored back to back
/// in one reused buffer, so reading allocates nothing per field or record
/// once the buffers have grown.
pub struct CsvReader<R> {
    input: R,
    mode: ReadMode,
    /// The current record's field bytes, concatenated.
    data: Vec<u8>,
    /// Per field: end offset in `data`, and whether it was quoted.
    ends: Vec<(usize, bool)>,
    state: State,
    quoted: bool,
    /// The line the reader is on, 1-based.
    line: u64,
    /// Where the current record started.
    record_line: u64,
    /// Where the current quoted field opened, for the unterminated error.
    quote_line: u64,
    started: bool,
    done: bool,
}

/// One field of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub text: &'a str,
    pub quoted: bool,
}

impl<'a> Field<'a> {
    pub fn value(self) -> ValueRef<'a> {
        type_field(self.text, self.quoted)
    }
}

/// A record borrowed from the reader until the next read.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    text: &'a str,
    ends: &'a [(usize, bool)],
    line: u64,
}

impl<'a> Record<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The 1-based line the record starts on.
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn get(&self, i: usize) -> Option<Field<'a>> {
        let &(end, quoted) = self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1].0 };
        // Every boundary was checked to be a char boundary when the record
        // was built, so this never fails; `get` keeps it panic-free anyway.
        let text = self.text.get(start..end)?;
        Some(Field { text, quoted })
    }

    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + '_ {
        (0..self.ends.len()).filter_map(move |i| self.get(i))
    }

    pub fn values(&self) -> impl Iterator<Item = ValueRef<'a>> + '_ {
        self.fields().map(Field::value)
    }
}

impl<R: BufRead> CsvReader<R> {
    pub fn new(input: R, mode: ReadMode) -> Self {
        CsvReader {
            input,
            mode,
            data: Vec::with_capacity(1024),
            ends: Vec::with_capacity(32),
            state: State::FieldStart,
            quoted: false,
            line: 1,
            record_line: 1,
            quote_line: 1,
            started: false,
            done: false,
        }
    }

    /// The next record, skipping blank lines; `None` at the end.
    pub fn read_record(&mut self) -> Result<Option<Record<'_>>, TableError> {
        loop {
            if !self.read_raw()? {
                return Ok(None);
            }
            let blank = self.ends.len() == 1 && self.data.is_empty() && !self.ends[0].1;
            if !blank {
                break;
            }
        }
        let text = match std::str::from_utf8(&self.data) {
            Ok(t) => t,
            Err(e) => {
                let before = &self.data[..e.valid_up_to()];
                let nl = before.iter().filter(|&&b| b == b'\n').count() as u64;
                return Err(TableError::InvalidUtf8 {
                    line: self.record_line + nl,
                });
            }
        };
        // Bytes that are valid one field at a time are valid together, but
        // not the other way round: `\xC3,\xA9` joins into a valid `é`. A
        // field boundary inside a character finds that case.
        if let Some(&(end, _)) = self
            .ends
            .iter()
            .find(|(end, _)| !text.is_char_boundary(*end))
        {
            let nl = self.data[..end].iter().filter(|&&b| b == b'\n').count() as u64;
            return Err(TableError::InvalidUtf8 {
                line: self.record_line + nl,
            });
        }
        Ok(Some(Record {
            text,
            ends: &self.ends,
            line: self.record_line,
        }))
    }

    fn end_field(&mut self) {
        self.ends.push((self.data.len(), self.quoted));
        self.quoted = false;
    }

    /// Reads one raw record into `data` / `ends`; false at the end of input.
    fn read_raw(&mut self) -> Result<bool, TableError> {
        self.data.clear();
        self.ends.clear();
        if self.done {
            return Ok(false);
        }
        self.quoted = false;
        self.record_line = self.line;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                self.done = true;
                return self.finish_at_eof();
            }
            let mut start = 0;
            if !self.started {
                self.started = true;
                if self.mode == ReadMode::External && buf.starts_with(b"\xEF\xBB\xBF") {
                    start = 3;
                }
            }
            let (used, complete) = scan(
                &buf[start..],
                self.mode,
                &mut self.state,
                &mut self.quoted,
                &mut self.data,
                &mut self.ends,
                &mut self.line,
                &mut self.quote_line,
            );
            self.input.consume(start + used);
            if complete {
                return Ok(true);
            }
        }
    }

    fn finish_at_eof(&mut self) -> Result<bool, TableError> {
        match self.state {
            State::Quoted | State::QuotedAfterCr => Err(TableError::UnterminatedQuote {
                line: self.quote_line,
            }),
            State::FieldStart | State::AfterCr => {
                if self.ends.is_empty() {
                    Ok(false)
                } else {
                    // `a,b,` at the very end: the last field is empty.
                    self.end_field();
                    Ok(true)
                }
            }
            State::Unquoted | State::QuoteInQuoted => {
                self.end_field();
                Ok(true)
            }
        }
    }
}

/// The state machine over one buffer. Returns how many bytes it used and
/// whether a record was completed (it stops right after the record end).
/// A free function over the reader's fields so that the input's buffer can
/// stay borrowed while they change.
#[allow(clippy::too_many_arguments)]
fn scan(
    buf: &[u8],
    mode: ReadMode,
    state: &mut State,
    quoted: &mut bool,
    data: &mut Vec<u8>,
    ends: &mut Vec<(usize, bool)>,
    line: &mut u64,
    quote_line: &mut u64,
) -> (usize, bool) {
    let n = buf.len();
    let mut i = 0;
    while i < n {
        match *state {
            State::AfterCr => {
                if buf[i] == b'\n' {
                    i += 1;
                }
                *state = State::FieldStart;
            }
            State::FieldStart => {
                if buf[i] == b'"' {
                    *quoted = true;
                    *quote_line = *line;
                    *state = State::Quoted;
                    i += 1;
                } else {
                    *state = State::Unquoted;
                }
            }
            State::Unquoted => {
                let run = i;
                while i < n && !UNQUOTED_STOP[buf[i] as usize] {
                    i += 1;
                }
                data.extend_from_slice(&buf[run..i]);
                if i == n {
                    break;
                }
                let c = buf[i];
                i += 1;
                ends.push((data.len(), *quoted));
                *quoted = false;
                match c {
                    b',' => *state = State::FieldStart,
                    b'\n' => {
                        *line += 1;
                        *state = State::FieldStart;
                        return (i, true);
                    }
                    _ => {
                        // `\r`: the record ends here; a `\n` after it is
                        // part of the same line end, looked at next time.
                        *line += 1;
                        *state = State::AfterCr;
                        return (i, true);
                    }
                }
            }
            State::Quoted => {
                let run = i;
                while i < n && !QUOTED_STOP[buf[i] as usize] {
                    i += 1;
                }
                data.extend_from_slice(&buf[run..i]);
                if i == n {
                    break;
                }
                let c = buf[i];
                i += 1;
                match c {
                    b'"' => *state = State::QuoteInQuoted,
                    b'\n' => {
                        *line += 1;
                        data.push(b'\n');
                    }
                    _ => {
                        *line += 1;
                        data.push(if mode == ReadMode::External {
                            b'\n'
                        } else {
                            b'\r'
                        });
                        *state = State::QuotedAfterCr;
                    }
                }
            }
            State::QuotedAfterCr => {
                if buf[i] == b'\n' {
                    if mode == ReadMode::Exact {
                        data.push(b'\n');
                    }
                    i += 1;
                }
                *state = State::Quoted;
            }
            State::QuoteInQuoted => {
                if buf[i] == b'"' {
                    data.push(b'"');
                    i += 1;
                    *state = State::Quoted;
                } else {
                    // The closing quote; whatever follows up to the next
                    // separator joins the field, as in the reference.
                    *state = State::Unquoted;
                }
            }
        }
    }
    (n, false)
}

/// A CSV table: the header, then rows checked to have its width.
pub struct TableReader<R> {
    csv: CsvReader<R>,
    columns: Vec<String>,
}

impl<R: BufRead> TableReader<R> {
    /// Reads the header. An input with no record at all is an error, and
    /// so are duplicate column names.
    pub fn new(input: R, mode: ReadMode) -> Result<Self, TableError> {
        let mut csv = CsvReader::new(input, mode);
        let columns: Vec<String> = match csv.read_record()? {
            Some(rec) => rec.fields().map(|f| f.text.to_string()).collect(),
            None => return Err(TableError::Empty),
        };
        check_unique(&columns)?;
        Ok(TableReader { csv, columns })
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The input, positioned after what was read.
    pub fn into_inner(self) -> R {
        self.csv.input
    }

    /// The next row; `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<Record<'_>>, TableError> {
        let expected = self.columns.len();
        match self.csv.read_record()? {
            Some(rec) if rec.len() != expected => Err(TableError::FieldCount {
                line: rec.line(),
                expected,
                found: rec.len(),
            }),
            other => Ok(other),
        }
    }
}

/// Duplicate names, each once, in order of first repetition.
fn check_unique(columns: &[String]) -> Result<(), TableError> {
    let mut seen = HashSet::new();
    let mut dups: Vec<String> = Vec::new();
    for c in columns {
        if !seen.insert(c.as_str()) && !dups.contains(c) {
            dups.push(c.clone());
        }
    }
    if dups.is_empty() {
        Ok(())
    } else {
        Err(TableError::DuplicateColumns(dups))
    }
}

/// Calls `f(line, fields)` for every record of a canonical table, the header
/// (line 1) included. An error from `f` stops the walk and comes back as
/// [`TableError::Rejected`] with the record's line.
pub fn for_each_record<F>(bytes: &[u8], mut f: F) -> Result<(), TableError>
where
    F: FnMut(u64, &[String], &[bool]) -> Result<(), String>,
{
    let mut table = TableReader::new(bytes, ReadMode::Exact)?;
    let header = table.columns().to_vec();
    let mut nulls: Vec<bool> = vec![false; header.len()];
    f(1, &header, &nulls).map_err(|message| TableError::Rejected { line: 1, message })?;
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    while let Some(rec) = table.next_row()? {
        let line = rec.line();
        // Reuse the Strings' buffers from row to row.
        fields.resize_with(rec.len(), String::new);
        nulls.resize(rec.len(), false);
        for ((slot, null), field) in fields.iter_mut().zip(nulls.iter_mut()).zip(rec.fields()) {
            slot.clear();
            slot.push_str(field.text);
            // An unquoted empty field is NULL; `""` is the empty string.
            *null = field.text.is_empty() && !field.quoted;
        }
        f(line, &fields, &nulls).map_err(|message| TableError::Rejected { line, message })?;
    }
    Ok(())
}

/// Reads CSV from outside (command output, a static table) and writes it
/// canonically: the same data always gives the same bytes.
pub fn canonicalize<R: BufRead, W: Write>(input: R, out: W) -> Result<TableStats, TableError> {
    let mut table = TableReader::new(input, ReadMode::External)?;
    let mut writer = CanonicalCsvWriter::new(out, table.columns())?;
    while let Some(rec) = table.next_row()? {
        for v in rec.values() {
            writer.write_value(v)?;
        }
        writer.end_row()?;
    }
    let (_, stats) = writer.finish()?;
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Writing.

/// Writes a table as canonical CSV (see the module doc). Output is gathered
/// in a buffer and handed to `out` in large pieces, so an unbuffered or
/// `dyn` writer costs one call per 64 KiB, not one per field.
pub struct CanonicalCsvWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    columns: Vec<String>,
    /// Values written in the current row.
    in_row: usize,
    row_is_null: bool,
    rows: u64,
}

const FLUSH_AT: usize = 64 * 1024;

impl<W: Write> CanonicalCsvWriter<W> {
    /// Writes the header. Duplicate or no column names are an error.
    pub fn new<S: AsRef<str>>(out: W, columns: &[S]) -> Result<Self, TableError> {
        let columns: Vec<String> = columns.iter().map(|c| c.as_ref().to_string()).collect();
        if columns.is_empty() {
            return Err(TableError::NoColumns);
        }
        check_unique(&columns)?;
        let mut w = CanonicalCsvWriter {
            out,
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            columns,
            in_row: 0,
            row_is_null: false,
            rows: 0,
        };
        for (i, c) in w.columns.iter().enumerate() {
            if i > 0 {
                w.buf.push(b',');
            }
            push_text(&mut w.buf, c);
        }
        w.buf.push(b'\n');
        Ok(w)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Rows completed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one value to the current row.
    pub fn write_value(&mut self, v: ValueRef<'_>) -> Result<(), TableError> {
        if self.in_row >= self.columns.len() {
            return Err(self.width_error(self.in_row + 1));
        }
        if self.in_row > 0 {
            self.buf.push(b',');
        }
        self.in_row += 1;
        self.row_is_null = matches!(v, ValueRef::Null);
        match v {
            ValueRef::Null => {}
            ValueRef::Integer(i) => push_int(&mut self.buf, i),
            ValueRef::Real(r) => {
                if !r.is_finite() {
                    return Err(TableError::NonFinite { row: self.rows + 1 });
                }
                push_real(&mut self.buf, r);
            }
            ValueRef::Text(s) => push_text(&mut self.buf, s),
        }
        Ok(())
    }

    /// Ends the current row, which must have one value per column.
    pub fn end_row(&mut self) -> Result<(), TableError> {
        if self.in_row != self.columns.len() {
            return Err(self.width_error(self.in_row));
        }
        if self.columns.len() == 1 && self.row_is_null {
            return Err(TableError::NullOnlyRow { row: self.rows + 1 });
        }
        self.buf.push(b'\n');
        self.in_row = 0;
        self.rows += 1;
        if self.buf.len() >= FLUSH_AT {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes a whole row.
    pub fn write_row(&mut self, row: &[ValueRef<'_>]) -> Result<(), TableError> {
        if row.len() != self.columns.len() {
            return Err(self.width_error(row.len()));
        }
        for v in row {
            self.write_value(*v)?;
        }
        self.end_row()
    }

    /// Flushes everything (a half-written row is an error) and hands back the
    /// writer with the table's row count and columns.
    pub fn finish(mut self) -> Result<(W, TableStats), TableError> {
        if self.in_row != 0 {
            return Err(self.width_error(self.in_row));
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        let stats = TableStats {
            rows: self.rows,
            columns: self.columns,
        };
        Ok((self.out, stats))
    }

    fn width_error(&self, found: usize) -> TableError {
        TableError::WrongWidth {
            row: self.rows + 1,
            expected: self.columns.len(),
            found,
        }
    }
}

fn push_text(buf: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        buf.extend_from_slice(b"\"\"");
    } else if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        buf.push(b'"');
        for (i, part) in s.split('"').enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"\"\"");
            }
            buf.extend_from_slice(part.as_bytes());
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
}

fn push_int(buf: &mut Vec<u8>, v: i64) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&digits[at..]);
}

/// A small stack buffer for `write!`, so formatting a real allocates nothing.
struct StackBuf {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackBuf {
    fn default() -> Self {
        StackBuf {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends a finite real as Python's `repr(float)` (module doc).
///
/// Rust's `{:e}` gives the shortest digits that read back to the same f64,
/// as Python's repr does, but the two differ on an exact tie: for
/// 1059438285926254.25 both `...254.2` and `...254.3` are shortest and
/// equally near; Python rounds half to even (`.2`), Rust's shortest mode
/// rounds half up. So when a tie is possible the digits are redone with
/// `{:.N$e}` (exact, round half to even) at the same length, and kept when
/// they read back to the same value. A tie needs the digit length to reach
/// the precision of the double (15+ digits), or a subnormal value.
pub fn push_real(buf: &mut Vec<u8>, v: f64) {
    // `+ 0.0` turns -0.0 into 0.0 (the reference does the same).
    let v = v + 0.0;
    let mut s = StackBuf::default();
    let Some((negative, mut digits, mut exp)) = sci_parts(&mut s, v, None) else {
        // Cannot happen for a finite f64; Display is a safe fallback.
        buf.extend_from_slice(v.to_string().as_bytes());
        return;
    };
    let mut alt_buf = StackBuf::default();
    let tie_possible = digits.len() >= 15 || (v != 0.0 && v.abs() < 1e-300);
    if tie_possible
        && let Some((_, alt, alt_exp)) = sci_parts(&mut alt_buf, v, Some(digits.len() - 1))
        && alt != digits
        && round_trips(alt, alt_exp, v)
    {
        digits = alt;
        exp = alt_exp;
    }
    layout_real(buf, negative, &digits, exp);
}

/// Digits without trailing zeros, with the exponent of the first one.
type SciDigits = ArrayVec;

/// Formats `v` with `{:e}` (or `{:.p$e}`) and splits the result into sign,
/// significant digits (trailing zeros dropped) and decimal exponent.
fn sci_parts(s: &mut StackBuf, v: f64, precision: Option<usize>) -> Option<(bool, SciDigits, i32)> {
    use fmt::Write as _;
    s.len = 0;
    match precision {
        None => write!(s, "{v:e}").ok()?,
        Some(p) => write!(s, "{v:.p$e}").ok()?,
    }
    let text = &s.bytes[..s.len];
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let epos = text.iter().position(|&b| b == b'e')?;
    let (mantissa, exp_text) = text.split_at(epos);
    let exp: i32 = std::str::from_utf8(exp_text.get(1..)?).ok()?.parse().ok()?;
    let mut digits = ArrayVec::default();
    for &b in mantissa {
        if b != b'.' {
            digits.push(b);
        }
    }
    while digits.len() > 1 && digits.last() == Some(b'0') {
        digits.pop();
    }
    Some((negative, digits, exp))
}

fn round_trips(digits: SciDigits, exp: i32, v: f64) -> bool {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(digits.as_slice());
    b.push(b'e');
    push_int(&mut b, i64::from(exp - digits.len() as i32 + 1));
    std::str::from_utf8(&b)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .is_some_and(|r| r == v.abs())
}

/// Python's layout for digits `d1 d2 ... dn` times 10^exp.
fn layout_real(buf: &mut Vec<u8>, negative: bool, digits: &SciDigits, exp: i32) {
    let digits = digits.as_slice();
    if negative {
        buf.push(b'-');
    }
    // Python's decpt: the position of the decimal point relative to the
    // first digit. Positional form while -4 < decpt <= 16.
    let decpt = exp + 1;
    if decpt > -4 && decpt <= 16 {
        let nd = digits.len() as i32;
        if decpt <= 0 {
            buf.extend_from_slice(b"0.");
            buf.extend(std::iter::repeat_n(b'0', (-decpt) as usize));
            buf.extend_from_slice(digits);
        } else if decpt < nd {
            let (a, b) = digits.split_at(decpt as usize);
            buf.extend_from_slice(a);
            buf.push(b'.');
            buf.extend_from_slice(b);
        } else {
            buf.extend_from_slice(digits);
            buf.extend(std::iter::repeat_n(b'0', (decpt - nd) as usize));
            buf.extend_from_slice(b".0");
        }
    } else {
        buf.extend_from_slice(&digits[..1]);
        if digits.len() > 1 {
            buf.push(b'.');
            buf.extend_from_slice(&digits[1..]);
        }
        buf.push(b'e');
        buf.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            buf.push(b'0');
        }
        push_int(buf, i64::from(e));
    }
}

/// Up to 32 digit bytes on the stack (a double needs at most 17).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct ArrayVec {
    bytes: [u8; 32],
    len: usize,
}

impl ArrayVec {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }
    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
    fn last(&self) -> Option<u8> {
        self.as_slice().last().copied()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Formats a real the canonical way, as a String (for messages and tests).
pub fn format_real(v: f64) -> String {
    let mut buf = Vec::new();
    push_real(&mut buf, v);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ty(s: &str) -> Value {
        type_field(s, false).to_owned()
    }

    #[test]
    fn typing_rules() {
        assert_eq!(ty(""), Value::Null);
        assert_eq!(type_field("", true), ValueRef::Text(""));
        assert_eq!(ty("0"), Value::Integer(0));
        assert_eq!(ty("-5"), Value::Integer(-5));
        assert_eq!(ty("+5"), Value::Integer(5));
        // As in the reference: `-0` matches the integer pattern.
        assert_eq!(ty("-0"), Value::Integer(0));
        assert_eq!(ty("9223372036854775807"), Value::Integer(i64::MAX));
        assert_eq!(ty("-9223372036854775808"), Value::Integer(i64::MIN));
        // Too big for 64 bits: text, every digit kept.
        assert_eq!(
            ty("9223372036854775808"),
            Value::Text("9223372036854775808".into())
        );
        for leading_zero in ["007", "0123", "-01", "00", "00.5", "01e5", "+007"] {
            assert_eq!(
                ty(leading_zero),
                Value::Text(leading_zero.into()),
                "{leading_zero}"
            );
        }
        assert_eq!(ty("1.5"), Value::Real(1.5));
        assert_eq!(ty("0.5"), Value::Real(0.5));
        assert_eq!(ty("-2e3"), Value::Real(-2000.0));
        assert_eq!(ty("1e5"), Value::Real(100000.0));
        assert_eq!(ty("1E+05"), Value::Real(100000.0));
        assert_eq!(ty("2.5e-3"), Value::Real(0.0025));
        assert_eq!(ty("1e-400"), Value::Real(0.0));
        for text in [
            ".5", "3.", "1e", "1e+", "-", "+", "inf", "-inf", "nan", "NaN", "Infinity", "1e400",
            "1_000", " 5", "5 ", "1,5", "0x10", "1.5.2", "e5", "--5", "5\n", "١٢",
        ] {
            assert_eq!(ty(text), Value::Text(text.into()), "{text:?}");
        }
    }

    #[test]
    fn quoting_does_not_change_the_type_of_a_number() {
        assert_eq!(type_field("5", true), ValueRef::Integer(5));
        assert_eq!(type_field("007", true), ValueRef::Text("007"));
        assert_eq!(type_field("1.5", true), ValueRef::Real(1.5));
    }

    type Rec = (u64, Vec<(String, bool)>);

    fn records(input: &[u8], mode: ReadMode) -> Result<Vec<Rec>, TableError> {
        let mut r = CsvReader::new(input, mode);
        let mut out = Vec::new();
        while let Some(rec) = r.read_record()? {
            out.push((
                rec.line(),
                rec.fields()
                    .map(|f| (f.text.to_string(), f.quoted))
                    .collect(),
            ));
        }
        Ok(out)
    }

    fn f(s: &str, q: bool) -> (String, bool) {
        (s.to_string(), q)
    }

    #[test]
    fn reader_handles_rfc4180() {
        let input = b"a,b,c\r\n1,\"x,\"\"y\"\"\nz\",\r\n\n\"\",,\"\"\n";
        let recs = records(input, ReadMode::Exact).unwrap();
        assert_eq!(
            recs,
            vec![
                (1, vec![f("a", false), f("b", false), f("c", false)]),
                (2, vec![f("1", false), f("x,\"y\"\nz", true), f("", false)]),
                // The blank line 4 is skipped.
                (5, vec![f("", true), f("", false), f("", true)]),
            ]
        );
    }

    #[test]
    fn reader_edge_cases_match_the_reference() {
        // A lone \r ends a record; no newline at the end; a trailing comma.
        let recs = records(b"a,b\r1,2\rx,", ReadMode::Exact).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].0, 2);
        assert_eq!(recs[2].1, vec![f("x", false), f("", false)]);
        // Text after a closing quote joins the field; a quote inside an
        // unquoted field is literal.
        let recs = records(b"\"ab\"c,d\"e\n", ReadMode::Exact).unwrap();
        assert_eq!(recs[0].1, vec![f("abc", true), f("d\"e", false)]);
        // A one-field record of `""` is a value, not a blank line.
        let recs = records(b"h\n\"\"\n\n", ReadMode::Exact).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(records(b"", ReadMode::Exact).unwrap().is_empty());
        assert!(records(b"\n\r\n", ReadMode::Exact).unwrap().is_empty());
    }

    #[test]
    fn external_mode_translates_newlines_in_quotes_and_drops_a_bom() {
        let input = b"\xEF\xBB\xBFid,note\r\n1,\"a\r\nb\rc\"\r\n";
        let ext = records(input, ReadMode::External).unwrap();
        assert_eq!(ext[0].1[0], f("id", false));
        assert_eq!(ext[1].1[1], f("a\nb\nc", true));
        let exact = records(input, ReadMode::Exact).unwrap();
        assert_eq!(exact[0].1[0], f("\u{feff}id", false));
        assert_eq!(exact[1].1[1], f("a\r\nb\rc", true));
    }

    #[test]
    fn reader_works_across_tiny_buffers() {
        let input: &[u8] = b"a,b\r\n\"x\"\"\r\ny\",2\r\n3,\"\"\r\n";
        let whole = records(input, ReadMode::Exact).unwrap();
        for cap in 1..8 {
            let mut r = CsvReader::new(io::BufReader::with_capacity(cap, input), ReadMode::Exact);
            let mut got = Vec::new();
            while let Some(rec) = r.read_record().unwrap() {
                got.push((
                    rec.line(),
                    rec.fields()
                        .map(|f| (f.text.to_string(), f.quoted))
                        .collect(),
                ));
            }
            assert_eq!(got, whole, "capacity {cap}");
        }
        assert_eq!(whole[2].0, 4);
    }

    #[test]
    fn malformed_csv_errors_name_the_line() {
        let err = |input: &[u8]| {
            let mut t = TableReader::new(input, ReadMode::Exact)?;
            while t.next_row()?.is_some() {}
            Ok::<(), TableError>(())
        };
        let e = err(b"a,b\n1,2\n3,\"open\n\n").unwrap_err();
        assert!(
            matches!(e, TableError::UnterminatedQuote { line: 3 }),
            "{e}"
        );
        assert_eq!(e.to_string(), "line 3: a quoted field is never closed");
        let e = err(b"a,b\n1,2\n\"multi\nline\",2\n1,2,3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 5: the row has 3 fields, the header has 2"
        );
        let e = err(b"a,b\n1,2\n\"x\n\xff\",2\n").unwrap_err();
        assert!(matches!(e, TableError::InvalidUtf8 { line: 4 }), "{e}");
        // Two halves of a character split by a separator are invalid too.
        let e = err(b"a,b\n\xC3,\xA9\n").unwrap_err();
        assert!(matches!(e, TableError::InvalidUtf8 { line: 2 }), "{e}");
        assert!(matches!(err(b"").unwrap_err(), TableError::Empty));
        assert!(matches!(err(b"\n\n").unwrap_err(), TableError::Empty));
        let e = err(b"a,b,a,b,c\n").unwrap_err();
        assert_eq!(e.to_string(), "duplicate column names: a, b");
    }

    #[test]
    fn canonical_reals_match_python_repr() {
        // Expected strings are Python 3's repr() of the same doubles.
        let cases: &[(f64, &str)] = &[
            (3.0, "3.0"),
            (-0.0, "0.0"),
            (0.0, "0.0"),
            (1.5, "1.5"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-4, "0.0001"),
            (1.5e-4, "0.00015"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (-1e-100, "-1e-100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (2.0f64.powi(60), "1.152921504606847e+18"),
            (100.0, "100.0"),
            (12.5, "12.5"),
            // Exact ties between two shortest candidates: Python rounds
            // half to even, Rust's `{:e}` alone would give ...254.3
            // (the first is 1059438285926254.25 exactly).
            (f64::from_bits(0x430e1c6d958d7b72), "1059438285926254.2"),
            (f64::from_bits(0x42b7fa57c450e950), "26363981746409.312"),
            (f64::from_bits(0xc2d8c0fe9119c088), "-108868734838530.12"),
        ];
        for &(v, want) in cases {
            assert_eq!(format_real(v), want, "{v:e}");
        }
    }

    #[test]
    fn writer_layout() {
        let mut out = Vec::new();
        let mut w = CanonicalCsvWriter::new(&mut out, &["id", "note", "", "x,y"]).unwrap();
        w.write_row(&[
            ValueRef::Integer(-7),
            ValueRef::Text("say \"hi\"\r\nnow"),
            ValueRef::Null,
            ValueRef::Real(3.0),
        ])
        .unwrap();
        w.write_row(&[
            ValueRef::Integer(i64::MIN),
            ValueRef::Text(""),
            ValueRef::Text(" padded "),
            ValueRef::Text("007"),
        ])
        .unwrap();
        let (_, stats) = w.finish().unwrap();
        assert_eq!(stats.rows, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,note,\"\",\"x,y\"\n-7,\"say \"\"hi\"\"\r\nnow\",,3.0\n-9223372036854775808,\"\", padded ,007\n"
        );
    }

    #[test]
    fn writer_errors() {
        let mut out = Vec::new();
        assert!(matches!(
            CanonicalCsvWriter::new(&mut out, &["a", "a"]),
            Err(TableError::DuplicateColumns(_))
        ));
        let empty: [&str; 0] = [];
        assert!(matches!(
            CanonicalCsvWriter::new(&mut out, &empty),
            Err(TableError::NoColumns)
        ));
        let mut w = CanonicalCsvWriter::new(Vec::new(), &["a"]).unwrap();
        assert!(matches!(
            w.write_value(ValueRef::Real(f64::INFINITY)),
            Err(TableError::NonFinite { row: 1 })
        ));
        let mut w = CanonicalCsvWriter::new(Vec::new(), &["a"]).unwrap();
        w.write_value(ValueRef::Null).unwrap();
        assert!(matches!(
            w.end_row(),
            Err(TableError::NullOnlyRow { row: 1 })
        ));
        let mut w = CanonicalCsvWriter::new(Vec::new(), &["a", "b"]).unwrap();
        assert!(w.write_row(&[ValueRef::Null]).is_err());
        w.write_value(ValueRef::Null).unwrap();
        assert!(w.end_row().is_err());
    }

    #[test]
    fn canonicalize_retypes_and_requotes() {
        let input =
            "\u{feff}id,name,score,zip\r\n\"5\",\"plain\",\"2.50\",\"007\"\r\n+6,,1e16,\"\"\r\n";
        let mut out = Vec::new();
        let stats = canonicalize(input.as_bytes(), &mut out).unwrap();
        assert_eq!(stats.rows, 2);
        assert_eq!(stats.columns, vec!["id", "name", "score", "zip"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,name,score,zip\n5,plain,2.5,007\n6,,1e+16,\"\"\n"
        );
    }

    #[test]
    fn for_each_record_walks_header_and_rows() {
        let mut seen = Vec::new();
        for_each_record(b"k,v\n1,\"a\nb\"\n2,x\n", |line, fields, _| {
            seen.push((line, fields.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], (1, vec!["k".to_string(), "v".to_string()]));
        assert_eq!(seen[2].0, 4);
        let e = for_each_record(
            b"k\n1\n",
            |line, _, _| if line == 2 { Err("no".into()) } else { Ok(()) },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "line 2: no");
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("finite", |r| r.is_finite())
                .prop_map(|r| Value::Real(r + 0.0)),
            (-1000i64..1000, 0u32..6)
                .prop_map(|(m, e)| Value::Real(m as f64 / 10f64.powi(e as i32))),
            "[a-z0-9 ,\"\r\n.+-]{0,12}".prop_map(Value::Text),
            "\\PC{0,8}".prop_map(Value::Text),
        ]
    }

    /// The value a text would become when read back: text that looks like a
    /// number is typed again (DESIGN §2), so a table that round-trips holds
    /// no such text (`Text("+0")` is written `+0` and reads back as 0).
    fn as_read_back(v: Value) -> Value {
        match v {
            Value::Text(s) if !s.is_empty() => type_field(&s, false).to_owned(),
            other => other,
        }
    }

    fn table_strategy() -> impl Strategy<Value = (Vec<String>, Vec<Vec<Value>>)> {
        (1usize..5).prop_flat_map(|ncols| {
            let names = proptest::collection::hash_set("[a-zA-Z_][a-z0-9_ ,\"]{0,6}", ncols)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>());
            let rows = proptest::collection::vec(
                proptest::collection::vec(value_strategy().prop_map(as_read_back), ncols)
                    // A one-column NULL row cannot be written (a blank line).
                    .prop_filter("not a lone NULL", |r| r.len() > 1 || r[0] != Value::Null),
                0..20,
            );
            (names, rows)
        })
    }

    fn write_table(columns: &[String], rows: &[Vec<Value>]) -> Vec<u8> {
        let mut w = CanonicalCsvWriter::new(Vec::new(), columns).unwrap();
        for r in rows {
            for v in r {
                w.write_value(v.as_ref()).unwrap();
            }
            w.end_row().unwrap();
        }
        w.finish().unwrap().0
    }

    fn read_table(bytes: &[u8]) -> (Vec<String>, Vec<Vec<Value>>) {
        let mut t = TableReader::new(bytes, ReadMode::Exact).unwrap();
        let cols = t.columns().to_vec();
        let mut rows = Vec::new();
        while let Some(rec) = t.next_row().unwrap() {
            rows.push(rec.values().map(ValueRef::to_owned).collect());
        }
        (cols, rows)
    }

    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn canonical_round_trip((columns, rows) in table_strategy()) {
            let bytes = write_table(&columns, &rows);
            let (cols2, rows2) = read_table(&bytes);
            prop_assert_eq!(&cols2, &columns);
            prop_assert_eq!(rows2.len(), rows.len());
            for (r1, r2) in rows.iter().zip(&rows2) {
                for (a, b) in r1.iter().zip(r2) {
                    prop_assert!(same(a, b), "{:?} read back as {:?}", a, b);
                }
            }
            // Bytes -> values -> bytes is the identity on canonical CSV.
            prop_assert_eq!(write_table(&cols2, &rows2), bytes.clone());
            // So is canonicalize, except that it reads as external CSV, where
            // a `\r` inside quotes becomes `\n` (Python's universal newlines).
            if !bytes.contains(&b'\r') {
                let mut again = Vec::new();
                canonicalize(&bytes[..], &mut again).unwrap();
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for mode in [ReadMode::Exact, ReadMode::External] {
                if let Ok(mut t) = TableReader::new(&bytes[..], mode) {
                    while let Ok(Some(rec)) = t.next_row() {
                        let _ = rec.values().count();
                    }
                }
            }
        }

        #[test]
        fn reals_read_back_exactly(r in any::<f64>().prop_filter("finite", |r| r.is_finite())) {
            let s = format_real(r);
            prop_assert_eq!(type_field(&s, false), ValueRef::Real(r + 0.0), "{}", s);
        }
    }
}
