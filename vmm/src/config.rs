//! xl.cfg parser: the domain configuration file format of Xen's `xl` toolstack (xl.cfg(5)).
//!
//! # Syntax (as accepted by xl's libxlutil, tools/libs/util/libxlu_cfg_{l.l,y.y})
//!
//! * A file is a sequence of statements `KEY = VALUE` or `KEY += VALUE`, each ended by a newline
//!   or `;`. The last statement may end at end of file. Empty statements are fine.
//! * `KEY` is `[a-z][a-z0-9_]*` (xl's lexer is lowercase-only).
//! * `VALUE` is a string `"..."` or `'...'` (one line, backslash escapes), a number token
//!   (starting with a digit; interpreted like C's `strtol(.., 0)` when a number is needed:
//!   `0x` hex, leading `0` octal, else decimal), or a list `[ v, v, ... ]` whose items are values
//!   (lists may nest), with newlines allowed anywhere inside and an optional trailing comma.
//!   Bare words are *not* values in xl (`type = pv` is a syntax error; write `type = "pv"`).
//! * `#` starts a comment that runs to the end of the line.
//! * A key may be set several times: the last assignment wins. `KEY += VALUE` appends to the
//!   previous value of the same kind (string concatenation or list concatenation).
//! * String escapes: `\" \' \\ \a \b \f \n \r \t \v`, `\xHH` (two hex digits) and `\OOO`
//!   (one to three octal digits). (xl's own decoder parses the latter in base 10, an upstream
//!   quirk kxen does not copy.) A string may not contain NUL or decode to invalid UTF-8.
//!
//! kxen accepts a slight superset in one place: a number token may contain any ASCII letter or
//! digit (`512M`), so that the error names the bad number instead of a stray letter; numeric keys
//! then reject it. CRLF line ends are accepted.
//!
//! # Keys kxen understands
//!
//! `name` (required), `type` (`"pv"`; `"pvh"`/`"hvm"` are refused), the deprecated `builder`
//! (`"generic"` = PV), `kernel` (required), `ramdisk`, `cmdline`, `root`, `extra`, `memory`,
//! `maxmem`, `vcpus`, `on_poweroff`, `on_reboot`, `on_crash`, and two kxen extensions:
//!
//! * `privileged = 1` — launch the guest as a privileged (dom0-style) domain, the config-file
//!   form of `kxen run --privileged`. A number like xl's booleans: non-zero is true. Default 0.
//! * `pte_abi = "kxen" | "xen"` — which guest page-table-update ABI kxen applies to this
//!   guest. Absent means kxen's default, `"kxen"`; any other value is an error.
//! * `cpuid_freq_leaf = 0` — do not offer CPUID leaf 0x16 (processor frequency) when the host
//!   leaves it empty. Xen never shows it to PV guests; kxen does by default so Linux skips
//!   its PIT calibration loop (docs/performance.md). A number like `privileged`; default 1.
//!
//! xl ignores keys it does not know; so does kxen, but it lists them in
//! [`DomainConfig::unknown`] so the caller can warn once per key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Memory when `memory` is absent: libxl's default `max_memkb` is 32 MiB (libxl_create.c).
pub const DEFAULT_MEMORY_MIB: u64 = 32;
/// Upper bound for `memory`/`maxmem`: guest RAM must end below kxen's private memslot at
/// GPA `1 << 39` (see docs/ARCHITECTURE.md, "Memory map").
pub const MAX_MEMORY_MIB: u64 = (1 << 39) >> 20;
/// Upper bound for `vcpus` accepted by kxen.
pub const MAX_VCPUS: u32 = 128;
/// Deepest list nesting accepted (real configs use at most 2).
pub const MAX_LIST_DEPTH: usize = 32;
/// Largest config file [`load_config`] reads.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The keys [`parse_config`] interprets; any other key lands in [`DomainConfig::unknown`].
pub const KNOWN_KEYS: &[&str] = &[
    "name",
    "type",
    "builder",
    "kernel",
    "ramdisk",
    "cmdline",
    "root",
    "extra",
    "memory",
    "maxmem",
    "vcpus",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "privileged",
    "pte_abi",
    "cpuid_freq_leaf",
];

/// Kind of guest. kxen only runs PV guests; PVH and HVM configs are refused at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestType {
    /// A Xen paravirtualised guest.
    Pv,
}

/// What to do when the guest shuts down for a given reason (xl.cfg(5) `on_poweroff` etc.).
/// All of xl's actions parse; kxen implements `Destroy` and `Restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Destroy the domain.
    Destroy,
    /// Destroy the domain and start a new one with the same configuration.
    Restart,
    /// Keep the domain's memory around (for inspection) without running it.
    Preserve,
    /// Dump core, then destroy.
    CoredumpDestroy,
    /// Dump core, then restart.
    CoredumpRestart,
    /// Rename the old domain, then restart.
    RenameRestart,
    /// Reset the domain's state without destroying it.
    SoftReset,
}

impl Action {
    /// Every action, in xl's order.
    pub const ALL: [Action; 7] = [
        Action::Destroy,
        Action::Restart,
        Action::Preserve,
        Action::CoredumpDestroy,
        Action::CoredumpRestart,
        Action::RenameRestart,
        Action::SoftReset,
    ];

    /// The name used in xl.cfg.
    pub fn name(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::RenameRestart => "rename-restart",
            Action::SoftReset => "soft-reset",
        }
    }

    /// Parse an xl.cfg action name (exact match, as xl's `parse_action_on_shutdown`).
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed, validated domain configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Domain name (`name`, required).
    pub name: String,
    /// Guest type (`type`, or `builder`; PV when both are absent, as xl on x86).
    pub type_: GuestType,
    /// Kernel image (`kernel`), resolved against the config file's directory.
    pub kernel: PathBuf,
    /// Initial ramdisk (`ramdisk`), resolved against the config file's directory.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line: `cmdline`, else built from `root` and `extra` as xl does.
    pub cmdline: String,
    /// Initial memory in MiB (`memory`, default [`DEFAULT_MEMORY_MIB`]).
    pub memory_mib: u64,
    /// Maximum memory in MiB (`maxmem`, default `memory_mib`; never below it).
    pub maxmem_mib: u64,
    /// Number of vCPUs (`vcpus`, default 1).
    pub vcpus: u32,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: Action,
    /// `on_reboot` (default restart).
    pub on_reboot: Action,
    /// `on_crash` (default destroy).
    pub on_crash: Action,
    /// kxen extension `privileged` (default false).
    pub privileged: bool,
    /// kxen extension `pte_abi`: `Some("kxen")`, `Some("xen")`, or `None` when absent
    /// (meaning kxen's default, `"kxen"`).
    pub pte_abi: Option<String>,
    /// kxen extension `cpuid_freq_leaf` (default true).
    pub cpuid_freq_leaf: bool,
    /// Keys present in the file that kxen does not interpret, in order of first appearance,
    /// each once.
    pub unknown: Vec<String>,
}

/// Errors from parsing an xl.cfg. Positions are 1-based line and column (in characters).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{}: config file is {size} bytes, more than the {max}-byte limit", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file is not valid xl.cfg syntax (or not UTF-8).
    #[error("{file}:{line}:{column}: {msg}")]
    Syntax {
        /// File name for messages (`<config>` when parsing a string).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        msg: String,
    },
    /// A key has a value kxen cannot accept.
    #[error("{file}:{line}:{column}: {key}: {msg}")]
    Value {
        /// File name for messages.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// 1-based column of the value.
        column: usize,
        /// The key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A required key is absent.
    #[error("{file}: missing required key `{key}`{hint}")]
    Missing {
        /// File name for messages.
        file: String,
        /// The key.
        key: &'static str,
        /// Extra advice (may be empty).
        hint: String,
    },
}

/// Read and parse an xl.cfg file; relative paths in it are resolved against its directory.
pub fn load_config(path: &Path) -> Result<DomainConfig, ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io_err)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_CONFIG_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    let file = path.display().to_string();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            // Valid prefix: position is computable without panicking.
            let prefix = std::str::from_utf8(valid).unwrap_or("");
            let (line, column) = end_position(prefix);
            return Err(ConfigError::Syntax {
                file,
                line,
                column,
                msg: "config file is not valid UTF-8".into(),
            });
        }
    };
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parse_named(&text, &base, &file)
}

/// Parse xl.cfg text; relative paths are resolved against `base_dir`. Errors name the
/// file as `<config>`.
pub fn parse_config(text: &str, base_dir: &Path) -> Result<DomainConfig, ConfigError> {
    parse_named(text, base_dir, "<config>")
}

fn parse_named(text: &str, base_dir: &Path, file: &str) -> Result<DomainConfig, ConfigError> {
    let settings = Parser::new(text, file).parse_file()?;
    build(&settings, base_dir, file)
}

/// Line and column just after `s`.
fn end_position(s: &str) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for c in s.chars() {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Comma,
    LBracket,
    RBracket,
    Assign,
    Append,
    Semi,
    Newline,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("word `{s}`"),
            Tok::Number(s) => format!("number `{s}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Comma => "`,`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Assign => "`=`".into(),
            Tok::Append => "`+=`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of file".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: Pos,
}

struct Lexer<'a> {
    src: &'a [u8],
    i: usize,
    line: usize,
    column: usize,
    file: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, file: &'a str) -> Self {
        Lexer {
            src: src.as_bytes(),
            i: 0,
            line: 1,
            column: 1,
            file,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }

    fn peek_byte(&self) -> Option<u8> {
        self.src.get(self.i).copied()
    }

    fn peek_byte_at(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.i.checked_add(ahead)?).copied()
    }

    /// Consume one byte, keeping line/column (columns count characters, not bytes).
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek_byte()?;
        self.i += 1;
        if b == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if b & 0xc0 != 0x80 {
            self.column += 1;
        }
        Some(b)
    }

    fn err(&self, pos: Pos, msg: impl Into<String>) -> ConfigError {
        ConfigError::Syntax {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            msg: msg.into(),
        }
    }

    /// The character at the cursor, for messages.
    fn char_here(&self) -> char {
        let rest = self.src.get(self.i..).unwrap_or(&[]);
        // The source is a &str and the cursor only stops on character boundaries.
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.chars().next())
            .unwrap_or('\u{fffd}')
    }

    fn next_token(&mut self) -> Result<Token, ConfigError> {
        loop {
            while matches!(self.peek_byte(), Some(b' ' | b'\t')) {
                self.bump();
            }
            let pos = self.pos();
            let Some(b) = self.peek_byte() else {
                return Ok(Token { tok: Tok::Eof, pos });
            };
            let tok = match b {
                b'\n' => {
                    self.bump();
                    Tok::Newline
                }
                b'\r' if self.peek_byte_at(1) == Some(b'\n') => {
                    self.bump();
                    self.bump();
                    Tok::Newline
                }
                b'#' => {
                    while !matches!(self.peek_byte(), None | Some(b'\n')) {
                        self.bump();
                    }
                    continue;
                }
                b'a'..=b'z' => {
                    let start = self.i;
                    while matches!(self.peek_byte(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_')) {
                        self.bump();
                    }
                    Tok::Ident(self.text_from(start))
                }
                b'0'..=b'9' => {
                    let start = self.i;
                    while matches!(self.peek_byte(), Some(c) if c.is_ascii_alphanumeric() || c == b'_')
                    {
                        self.bump();
                    }
                    Tok::Number(self.text_from(start))
                }
                b'"' | b'\'' => Tok::Str(self.string(pos)?),
                b',' => self.single(Tok::Comma),
                b'[' => self.single(Tok::LBracket),
                b']' => self.single(Tok::RBracket),
                b'=' => self.single(Tok::Assign),
                b';' => self.single(Tok::Semi),
                b'+' if self.peek_byte_at(1) == Some(b'=') => {
                    self.bump();
                    self.bump();
                    Tok::Append
                }
                _ => {
                    let c = self.char_here();
                    let mut msg = format!("unexpected character `{}`", c.escape_debug());
                    if c.is_ascii_uppercase() {
                        msg.push_str(" (keys are lowercase: [a-z][a-z0-9_]*)");
                    } else if "+-.():".contains(c) {
                        // xl flags these as "likely Python" too (libxlu_cfg_l.l).
                        msg.push_str(
                            " (xl.cfg is not Python: values are \"strings\", numbers or [lists])",
                        );
                    }
                    return Err(self.err(pos, msg));
                }
            };
            return Ok(Token { tok, pos });
        }
    }

    fn single(&mut self, t: Tok) -> Tok {
        self.bump();
        t
    }

    fn text_from(&self, start: usize) -> String {
        String::from_utf8_lossy(self.src.get(start..self.i).unwrap_or(&[])).into_owned()
    }

    /// A quoted string starting at the cursor (the opening quote). Strings end on the same line.
    fn string(&mut self, start: Pos) -> Result<String, ConfigError> {
        let quote = self.bump();
        let mut out: Vec<u8> = Vec::new();
        let unterminated = |lx: &Self| lx.err(start, "unterminated string");
        loop {
            let esc_pos = self.pos();
            match self.peek_byte() {
                None | Some(b'\n') => return Err(unterminated(self)),
                Some(b) if Some(b) == quote => {
                    self.bump();
                    break;
                }
                Some(b'\\') => {
                    self.bump();
                    let Some(e) = self.peek_byte() else {
                        return Err(unterminated(self));
                    };
                    if e == b'\n' {
                        return Err(unterminated(self));
                    }
                    self.bump();
                    let byte = match e {
                        b'"' | b'\'' | b'\\' => e,
                        b'a' => 0x07,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0x0b,
                        b'x' => {
                            let mut v: u8 = 0;
                            for _ in 0..2 {
                                let d = self.peek_byte().and_then(|c| (c as char).to_digit(16));
                                let Some(d) = d else {
                                    return Err(self.err(
                                        esc_pos,
                                        "`\\x` escape needs exactly two hex digits",
                                    ));
                                };
                                self.bump();
                                v = v * 16 + d as u8;
                            }
                            v
                        }
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.peek_byte() {
                                    Some(c @ b'0'..=b'7') => {
                                        self.bump();
                                        v = v * 8 + u32::from(c - b'0');
                                    }
                                    _ => break,
                                }
                            }
                            u8::try_from(v).map_err(|_| {
                                self.err(esc_pos, "octal escape is larger than \\377")
                            })?
                        }
                        _ => {
                            // Step back is not needed: report at the backslash.
                            let c = char::from(e);
                            let shown = if e.is_ascii() { c } else { '\u{fffd}' };
                            return Err(self.err(
                                esc_pos,
                                format!("invalid escape `\\{}` in string", shown.escape_debug()),
                            ));
                        }
                    };
                    out.push(byte);
                }
                Some(b) => {
                    self.bump();
                    out.push(b);
                }
            }
        }
        if out.contains(&0) {
            return Err(self.err(start, "string contains a NUL character"));
        }
        String::from_utf8(out).map_err(|_| self.err(start, "string is not valid UTF-8"))
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    /// A string or number token, kept as text as xl does.
    Atom {
        text: String,
        pos: Pos,
    },
    List {
        items: Vec<Value>,
        pos: Pos,
    },
}

impl Value {
    fn pos(&self) -> Pos {
        match self {
            Value::Atom { pos, .. } | Value::List { pos, .. } => *pos,
        }
    }
}

#[derive(Debug, Clone)]
struct Setting {
    value: Value,
    /// The final value came from `+=`.
    appended: bool,
}

#[derive(Debug, Default)]
struct Settings {
    map: HashMap<String, Setting>,
    order: Vec<String>,
}

impl Settings {
    fn get(&self, key: &str) -> Option<&Setting> {
        self.map.get(key)
    }
}

struct Parser<'a> {
    lx: Lexer<'a>,
    peeked: Option<Token>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, file: &'a str) -> Self {
        Parser {
            lx: Lexer::new(src, file),
            peeked: None,
        }
    }

    fn next(&mut self) -> Result<Token, ConfigError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lx.next_token(),
        }
    }

    fn peek(&mut self) -> Result<&Token, ConfigError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lx.next_token()?);
        }
        // Just filled.
        self.peeked
            .as_ref()
            .ok_or_else(|| self.lx.err(self.lx.pos(), "internal parser error"))
    }

    fn skip_newlines(&mut self) -> Result<(), ConfigError> {
        while self.peek()?.tok == Tok::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn parse_file(mut self) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        loop {
            let t = self.next()?;
            let key = match t.tok {
                Tok::Newline | Tok::Semi => continue,
                Tok::Eof => break,
                Tok::Ident(k) => k,
                other => {
                    return Err(self
                        .lx
                        .err(t.pos, format!("expected a key, found {}", other.describe())))
                }
            };
            let op = self.next()?;
            let append = match op.tok {
                Tok::Assign => false,
                Tok::Append => true,
                other => {
                    return Err(self.lx.err(
                        op.pos,
                        format!("expected `=` after key `{key}`, found {}", other.describe()),
                    ))
                }
            };
            let value = self.parse_value(0)?;
            let end = self.next()?;
            match end.tok {
                Tok::Newline | Tok::Semi | Tok::Eof => {}
                other => {
                    return Err(self.lx.err(
                        end.pos,
                        format!(
                            "expected end of line or `;` after the value of `{key}`, found {}",
                            other.describe()
                        ),
                    ))
                }
            }
            self.store(&mut settings, key, value, append)?;
            if end.tok == Tok::Eof {
                break;
            }
        }
        Ok(settings)
    }

    fn store(
        &self,
        settings: &mut Settings,
        key: String,
        value: Value,
        append: bool,
    ) -> Result<(), ConfigError> {
        let pos = value.pos();
        let value = match (append, settings.map.get(&key)) {
            (true, Some(prev)) => match (&prev.value, value) {
                (Value::Atom { text: a, .. }, Value::Atom { text: b, .. }) => Value::Atom {
                    text: format!("{a}{b}"),
                    pos,
                },
                (Value::List { items: a, .. }, Value::List { items: b, .. }) => {
                    let mut items = a.clone();
                    items.extend(b);
                    Value::List { items, pos }
                }
                _ => {
                    return Err(self.lx.err(
                        pos,
                        format!("`{key} +=`: cannot add a list to a single value or vice versa"),
                    ))
                }
            },
            (_, _) => value,
        };
        if !settings.map.contains_key(&key) {
            settings.order.push(key.clone());
        }
        settings.map.insert(
            key,
            Setting {
                value,
                appended: append,
            },
        );
        Ok(())
    }

    fn parse_value(&mut self, depth: usize) -> Result<Value, ConfigError> {
        let t = self.next()?;
        match t.tok {
            Tok::Str(text) | Tok::Number(text) => Ok(Value::Atom { text, pos: t.pos }),
            Tok::LBracket => self.parse_list(t.pos, depth + 1),
            Tok::Ident(w) => Err(self.lx.err(
                t.pos,
                format!("bare word `{w}` is not a value; quote it: \"{w}\""),
            )),
            Tok::Newline | Tok::Eof | Tok::Semi => {
                Err(self.lx.err(t.pos, "missing value after `=`"))
            }
            other => Err(self.lx.err(
                t.pos,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    fn parse_list(&mut self, open: Pos, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_LIST_DEPTH {
            return Err(self.lx.err(
                open,
                format!("lists nested more than {MAX_LIST_DEPTH} deep"),
            ));
        }
        let mut items = Vec::new();
        self.skip_newlines()?;
        if self.peek()?.tok == Tok::RBracket {
            self.next()?;
            return Ok(Value::List { items, pos: open });
        }
        loop {
            if self.peek()?.tok == Tok::Eof {
                return Err(self.unterminated_list(open));
            }
            items.push(self.parse_value(depth)?);
            self.skip_newlines()?;
            let t = self.next()?;
            match t.tok {
                Tok::RBracket => break,
                Tok::Comma => {
                    self.skip_newlines()?;
                    if self.peek()?.tok == Tok::RBracket {
                        self.next()?;
                        break;
                    }
                }
                Tok::Eof => return Err(self.unterminated_list(open)),
                other => {
                    return Err(self.lx.err(
                        t.pos,
                        format!("expected `,` or `]` in list, found {}", other.describe()),
                    ))
                }
            }
        }
        Ok(Value::List { items, pos: open })
    }

    fn unterminated_list(&self, open: Pos) -> ConfigError {
        self.lx
            .err(open, "unterminated list: `[` has no matching `]`")
    }
}

// ---------------------------------------------------------------------------------------------
// Interpretation

struct Ctx<'a> {
    settings: &'a Settings,
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: &str, pos: Pos, msg: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<(&str, Pos)>, ConfigError> {
        match self.settings.get(key).map(|s| &s.value) {
            None => Ok(None),
            Some(Value::Atom { text, pos }) => Ok(Some((text.as_str(), *pos))),
            Some(Value::List { pos, .. }) => {
                Err(self.err(key, *pos, "expected a single value, found a list"))
            }
        }
    }

    fn number(&self, key: &str) -> Result<Option<(u64, Pos)>, ConfigError> {
        let Some((text, pos)) = self.string(key)? else {
            return Ok(None);
        };
        if self.settings.get(key).is_some_and(|s| s.appended) {
            return Err(self.err(key, pos, "`+=` cannot be used with a number"));
        }
        parse_number(text)
            .map(|v| Some((v, pos)))
            .map_err(|m| self.err(key, pos, format!("`{text}`: {m}")))
    }

    fn path(&self, key: &str, base: &Path) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(("", pos)) => Err(self.err(key, pos, "empty path")),
            Some((p, _)) => Ok(Some(base.join(p))),
        }
    }

    fn action(&self, key: &str, default: Action) -> Result<Action, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some((s, pos)) => Action::from_name(s).ok_or_else(|| {
                let names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
                self.err(
                    key,
                    pos,
                    format!("unknown action `{s}` (one of: {})", names.join(", ")),
                )
            }),
        }
    }
}

/// A number the way xl reads it (`strtol` base 0): `0x`/`0X` hex, leading `0` octal, else
/// decimal. No sign, no spaces; overflow is an error.
fn parse_number(text: &str) -> Result<u64, &'static str> {
    let (digits, radix) =
        if let Some(h) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (h, 16)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
    if digits.is_empty() {
        return Err("not a valid number");
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).ok_or("not a valid number")?;
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or("number too large")?;
    }
    Ok(v)
}

fn build(settings: &Settings, base: &Path, file: &str) -> Result<DomainConfig, ConfigError> {
    let cx = Ctx { settings, file };
    let missing = |key: &'static str, hint: &str| ConfigError::Missing {
        file: file.to_string(),
        key,
        hint: hint.to_string(),
    };
    const PV_ONLY: &str = "kxen runs PV guests only";

    // xl_parse.c: `type` is pv/pvh/hvm; the deprecated `builder` is generic (PV) or hvm; PV when
    // neither is given (x86).
    if let Some((t, pos)) = cx.string("type")? {
        match t {
            "pv" => {}
            "pvh" | "hvm" => {
                return Err(cx.err("type", pos, format!("{PV_ONLY} (type = \"{t}\")")))
            }
            _ => {
                return Err(cx.err(
                    "type",
                    pos,
                    format!("invalid domain type `{t}` (one of: pv, pvh, hvm)"),
                ))
            }
        }
    }
    if let Some((b, pos)) = cx.string("builder")? {
        match b {
            "generic" => {}
            "hvm" => return Err(cx.err("builder", pos, format!("{PV_ONLY} (builder = \"hvm\")"))),
            _ => {
                return Err(cx.err(
                    "builder",
                    pos,
                    format!("invalid builder `{b}` (one of: generic, hvm)"),
                ))
            }
        }
    }

    let name = match cx.string("name")? {
        None => return Err(missing("name", "")),
        Some(("", pos)) => return Err(cx.err("name", pos, "domain name is empty")),
        Some((n, _)) => n.to_string(),
    };

    let kernel = match cx.path("kernel", base)? {
        Some(k) => k,
        None => {
            let hint = if settings.get("bootloader").is_some() {
                " (kxen does not run a bootloader such as pygrub; boot PV-GRUB as the kernel)"
            } else {
                ""
            };
            return Err(missing("kernel", hint));
        }
    };
    let ramdisk = match cx.string("ramdisk")? {
        Some(("", _)) => None,
        _ => cx.path("ramdisk", base)?,
    };

    // xl_parse.c parse_cmdline: `cmdline` wins; else "root=R E", "root=R" or "E".
    let cmdline = match cx.string("cmdline")? {
        Some((c, _)) => c.to_string(),
        None => match (cx.string("root")?, cx.string("extra")?) {
            (Some((r, _)), Some((e, _))) => format!("root={r} {e}"),
            (Some((r, _)), None) => format!("root={r}"),
            (None, Some((e, _))) => e.to_string(),
            (None, None) => String::new(),
        },
    };

    let memory_mib = match cx.number("memory")? {
        None => DEFAULT_MEMORY_MIB,
        Some((m, pos)) => {
            if m == 0 || m > MAX_MEMORY_MIB {
                return Err(cx.err(
                    "memory",
                    pos,
                    format!("{m} MiB is out of range (1..={MAX_MEMORY_MIB})"),
                ));
            }
            m
        }
    };
    let maxmem_mib = match cx.number("maxmem")? {
        None => memory_mib,
        Some((m, pos)) => {
            if m > MAX_MEMORY_MIB {
                return Err(cx.err(
                    "maxmem",
                    pos,
                    format!("{m} MiB is out of range (..={MAX_MEMORY_MIB})"),
                ));
            }
            if m < memory_mib {
                return Err(cx.err(
                    "maxmem",
                    pos,
                    format!("maxmem ({m} MiB) is smaller than memory ({memory_mib} MiB)"),
                ));
            }
            m
        }
    };
    let vcpus = match cx.number("vcpus")? {
        None => 1,
        Some((v, pos)) => match u32::try_from(v) {
            Ok(v) if (1..=MAX_VCPUS).contains(&v) => v,
            _ => {
                return Err(cx.err(
                    "vcpus",
                    pos,
                    format!("{v} is out of range (1..={MAX_VCPUS})"),
                ))
            }
        },
    };

    let on_poweroff = cx.action("on_poweroff", Action::Destroy)?;
    let on_reboot = cx.action("on_reboot", Action::Restart)?;
    let on_crash = cx.action("on_crash", Action::Destroy)?;

    // Boolean like xl's defbool: a number, non-zero is true.
    let privileged = cx.number("privileged")?.is_some_and(|(v, _)| v != 0);

    let cpuid_freq_leaf = cx.number("cpuid_freq_leaf")?.is_none_or(|(v, _)| v != 0);

    let pte_abi = match cx.string("pte_abi")? {
        None => None,
        Some((v, _)) if xen_abi::pte::PteAbi::from_name(v).is_some() => Some(v.to_string()),
        Some((v, pos)) => {
            return Err(cx.err(
                "pte_abi",
                pos,
                format!("unknown page-table ABI `{v}` (one of: kxen, xen, xen-debug)"),
            ))
        }
    };

    let unknown = settings
        .order
        .iter()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();

    Ok(DomainConfig {
        name,
        type_: GuestType::Pv,
        kernel,
        ramdisk,
        cmdline,
        memory_mib,
        maxmem_mib,
        vcpus,
        on_poweroff,
        on_reboot,
        on_crash,
        privileged,
        pte_abi,
        cpuid_freq_leaf,
        unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"g\"\nkernel = \"k.elf\"\n";

    fn parse(text: &str) -> Result<DomainConfig, ConfigError> {
        parse_config(text, Path::new("/base"))
    }

    fn ok(text: &str) -> DomainConfig {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}\n--- input:\n{text}"),
        }
    }

    /// Parse only the syntax layer and return the raw settings.
    fn raw(text: &str) -> Result<Settings, ConfigError> {
        Parser::new(text, "<t>").parse_file()
    }

    fn raw_ok(text: &str) -> Settings {
        raw(text).unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    fn atom(s: &Settings, k: &str) -> String {
        match &s.get(k).expect("key present").value {
            Value::Atom { text, .. } => text.clone(),
            v => panic!("not an atom: {v:?}"),
        }
    }

    fn list_texts(v: &Value) -> Vec<String> {
        match v {
            Value::List { items, .. } => items
                .iter()
                .map(|i| match i {
                    Value::Atom { text, .. } => text.clone(),
                    Value::List { .. } => "<list>".into(),
                })
                .collect(),
            v => panic!("not a list: {v:?}"),
        }
    }

    /// (line, column, message) of a syntax or value error.
    fn err_at(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(ConfigError::Syntax {
                line, column, msg, ..
            })
            | Err(ConfigError::Value {
                line, column, msg, ..
            }) => (line, column, msg),
            other => panic!("expected a positioned error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_xl_defaults() {
        let c = ok(MIN);
        assert_eq!(c.name, "g");
        assert_eq!(c.type_, GuestType::Pv);
        assert_eq!(c.kernel, PathBuf::from("/base/k.elf"));
        assert_eq!(c.ramdisk, None);
        assert_eq!(c.cmdline, "");
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.maxmem_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.on_poweroff, Action::Destroy);
        assert_eq!(c.on_reboot, Action::Restart);
        assert_eq!(c.on_crash, Action::Destroy);
        assert!(!c.privileged);
        assert_eq!(c.pte_abi, None);
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn all_known_keys_are_interpreted() {
        let c = ok(
            "name='d'\ntype=\"pv\"\nbuilder=\"generic\"\nkernel=\"/abs/vmlinuz\"\n\
             ramdisk=\"initrd\"\ncmdline=\"console=hvc0\"\nmemory=256\nmaxmem=512\nvcpus=4\n\
             on_poweroff=\"preserve\"\non_reboot=\"destroy\"\non_crash=\"coredump-restart\"\n\
             privileged=1\npte_abi=\"xen\"\n",
        );
        assert_eq!(c.name, "d");
        assert_eq!(c.kernel, PathBuf::from("/abs/vmlinuz"));
        assert_eq!(c.ramdisk, Some(PathBuf::from("/base/initrd")));
        assert_eq!(c.cmdline, "console=hvc0");
        assert_eq!((c.memory_mib, c.maxmem_mib, c.vcpus), (256, 512, 4));
        assert_eq!(c.on_poweroff, Action::Preserve);
        assert_eq!(c.on_reboot, Action::Destroy);
        assert_eq!(c.on_crash, Action::CoredumpRestart);
        assert!(c.privileged);
        assert_eq!(c.pte_abi.as_deref(), Some("xen"));
    }

    #[test]
    fn every_action_name_round_trips() {
        for a in Action::ALL {
            let c = ok(&format!("{MIN}on_crash = \"{}\"\n", a.name()));
            assert_eq!(c.on_crash, a);
            assert_eq!(a.to_string(), a.name());
        }
        let (l, col, m) = err_at(&format!("{MIN}on_crash = \"explode\"\n"));
        assert_eq!((l, col), (3, 12));
        assert!(m.contains("unknown action `explode`"), "{m}");
    }

    #[test]
    fn string_forms_and_escapes_decode() {
        let s = raw_ok(
            "a = \"dq\"\nb = 'sq'\nc = \"it's\"\nd = 'say \"hi\"'\n\
             e = \"\\\"\\'\\\\\\a\\b\\f\\n\\r\\t\\v\"\nf = \"\\x41\\x7e\"\ng = \"\\101\\7z\"\n\
             h = \"\"\ni = \"caf\u{e9} \u{1f600}\"\n",
        );
        assert_eq!(atom(&s, "a"), "dq");
        assert_eq!(atom(&s, "b"), "sq");
        assert_eq!(atom(&s, "c"), "it's");
        assert_eq!(atom(&s, "d"), "say \"hi\"");
        assert_eq!(atom(&s, "e"), "\"'\\\x07\x08\x0c\n\r\t\x0b");
        assert_eq!(atom(&s, "f"), "A~");
        assert_eq!(atom(&s, "g"), "A\x07z");
        assert_eq!(atom(&s, "h"), "");
        assert_eq!(atom(&s, "i"), "caf\u{e9} \u{1f600}");
    }

    #[test]
    fn bad_escapes_are_errors_at_the_backslash() {
        for (text, col, needle) in [
            ("a = \"x\\q\"", 7, "invalid escape `\\q`"),
            ("a = \"\\x4\"", 6, "two hex digits"),
            ("a = \"\\xg0\"", 6, "two hex digits"),
            ("a = \"\\777\"", 6, "larger than"),
            ("a = \"\\x00\"", 5, "NUL"),
            ("a = \"\\xff\"", 5, "not valid UTF-8"),
        ] {
            let (l, c, m) = err_at(text);
            assert_eq!((l, c), (1, col), "{text}: {m}");
            assert!(m.contains(needle), "{text}: {m}");
        }
    }

    #[test]
    fn numbers_follow_strtol_base_zero() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("512"), Ok(512));
        assert_eq!(parse_number("0x200"), Ok(512));
        assert_eq!(parse_number("0X1f"), Ok(31));
        assert_eq!(parse_number("010"), Ok(8));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_number("18446744073709551616"),
            Err("number too large")
        );
        assert_eq!(
            parse_number("0x1_0000_0000_0000_0000"),
            Err("not a valid number")
        );
        assert_eq!(parse_number("0x10000000000000000"), Err("number too large"));
        assert_eq!(parse_number("08"), Err("not a valid number"));
        assert_eq!(parse_number("0x"), Err("not a valid number"));
        assert_eq!(parse_number("512M"), Err("not a valid number"));
        assert_eq!(parse_number("-1"), Err("not a valid number"));
        assert_eq!(parse_number(""), Err("not a valid number"));
        let c = ok(&format!("{MIN}memory = 0x40\nvcpus = \"2\"\n"));
        assert_eq!((c.memory_mib, c.vcpus), (64, 2));
    }

    #[test]
    fn huge_numbers_are_errors_not_wraps() {
        let (l, c, m) = err_at(&format!("{MIN}memory = 99999999999999999999999999\n"));
        assert_eq!((l, c), (3, 10));
        assert!(m.contains("too large"), "{m}");
        let (_, _, m) = err_at(&format!("{MIN}memory = 18446744073709551615\n"));
        assert!(m.contains("out of range"), "{m}");
        let (_, _, m) = err_at(&format!("{MIN}vcpus = 4294967297\n"));
        assert!(m.contains("out of range"), "{m}");
        let (_, _, m) = err_at(&format!("{MIN}maxmem = 0xffffffffffffffffff\n"));
        assert!(m.contains("too large"), "{m}");
    }

    #[test]
    fn numeric_ranges_are_enforced() {
        assert!(err_at(&format!("{MIN}memory = 0\n"))
            .2
            .contains("out of range"));
        assert!(err_at(&format!("{MIN}vcpus = 0\n"))
            .2
            .contains("out of range"));
        assert!(err_at(&format!("{MIN}vcpus = 129\n"))
            .2
            .contains("out of range"));
        let m = err_at(&format!("{MIN}memory = 512\nmaxmem = 256\n")).2;
        assert!(m.contains("smaller than memory"), "{m}");
        let m = err_at(&format!("{MIN}memory = \"lots\"\n")).2;
        assert!(m.contains("not a valid number"), "{m}");
        let m = err_at(&format!("{MIN}memory = 512M\n")).2;
        assert!(m.contains("`512M`: not a valid number"), "{m}");
        let c = ok(&format!(
            "{MIN}memory = {MAX_MEMORY_MIB}\nvcpus = {MAX_VCPUS}\n"
        ));
        assert_eq!((c.memory_mib, c.vcpus), (MAX_MEMORY_MIB, MAX_VCPUS));
    }

    #[test]
    fn lists_span_lines_nest_and_allow_trailing_comma() {
        let s = raw_ok(
            "disk = [ 'phy:/dev/vg/root,xvda,w',\n\
             \t# a comment inside a list\n\
             \n   \"file:/img,xvdb,r\" ,\n]\n\
             e = []\nf = [\n]\ng = [1,2,3]\nn = [[\"a\"], [], [[\"b\"]]]\n",
        );
        assert_eq!(
            list_texts(&s.get("disk").unwrap().value),
            ["phy:/dev/vg/root,xvda,w", "file:/img,xvdb,r"]
        );
        assert!(list_texts(&s.get("e").unwrap().value).is_empty());
        assert!(list_texts(&s.get("f").unwrap().value).is_empty());
        assert_eq!(list_texts(&s.get("g").unwrap().value), ["1", "2", "3"]);
        assert_eq!(
            list_texts(&s.get("n").unwrap().value),
            ["<list>", "<list>", "<list>"]
        );
    }

    #[test]
    fn list_syntax_errors_have_positions() {
        for (text, (l, c), needle) in [
            ("a = [ , \"x\" ]", (1, 7), "expected a value, found `,`"),
            (
                "a = [ \"x\",, \"y\" ]",
                (1, 11),
                "expected a value, found `,`",
            ),
            ("a = [ \"x\" \"y\" ]", (1, 11), "expected `,` or `]`"),
            ("a = [ \"x\",\n\n \"y\"", (1, 5), "unterminated list"),
            ("a = [", (1, 5), "unterminated list"),
            ("a = [ x ]", (1, 7), "bare word `x`"),
            ("a = ]", (1, 5), "expected a value, found `]`"),
        ] {
            let (gl, gc, m) = err_at(text);
            assert_eq!((gl, gc), (l, c), "{text}: {m}");
            assert!(m.contains(needle), "{text}: {m}");
        }
    }

    #[test]
    fn comments_blank_lines_and_semicolons_separate_statements() {
        let s = raw_ok(
            "# header\n\n   \t\na = 1 ; b = \"x\" # trailing\n;;\nc = 'y';\n# no newline at end",
        );
        assert_eq!(atom(&s, "a"), "1");
        assert_eq!(atom(&s, "b"), "x");
        assert_eq!(atom(&s, "c"), "y");
        // Last statement without a newline; CRLF line ends.
        let s = raw_ok("a = 1\r\nb = 2");
        assert_eq!((atom(&s, "a"), atom(&s, "b")), ("1".into(), "2".into()));
        // `#` inside a string is not a comment.
        assert_eq!(atom(&raw_ok("a = \"x # y\""), "a"), "x # y");
        // Empty input is a valid (empty) file.
        assert!(raw_ok("").map.is_empty());
    }

    #[test]
    fn last_assignment_wins_and_append_concatenates() {
        let s = raw_ok("a = 'x'\na = 'y'\nb = 'p'\nb += 'q'\nl = [1]\nl += [2, 3]\nn += 'z'\n");
        assert_eq!(atom(&s, "a"), "y");
        assert_eq!(atom(&s, "b"), "pq");
        assert_eq!(list_texts(&s.get("l").unwrap().value), ["1", "2", "3"]);
        assert_eq!(atom(&s, "n"), "z");
        let m = err_at("a = 'x'\na += [1]\n").2;
        assert!(m.contains("cannot add a list"), "{m}");
        let m = err_at(&format!("{MIN}memory = 1\nmemory += 2\n")).2;
        assert!(m.contains("`+=` cannot be used with a number"), "{m}");
        let c = ok("name = 'a'\nname += 'b'\nkernel = 'k'\nextra = 'x=1'\nextra += ' y=2'\n");
        assert_eq!((c.name.as_str(), c.cmdline.as_str()), ("ab", "x=1 y=2"));
    }

    #[test]
    fn syntax_errors_report_line_and_column() {
        for (text, (l, c), needle) in [
            ("name = \"unterminated\n", (1, 8), "unterminated string"),
            ("a = 1\nb = 'x\\\n'", (2, 5), "unterminated string"),
            (
                "a = 1\nname \"x\"\n",
                (2, 6),
                "expected `=` after key `name`",
            ),
            ("a = 1\n\nb =\n", (3, 4), "missing value after `=`"),
            ("a = 1\nb = 2 c = 3\n", (2, 7), "expected end of line"),
            ("a = 1\n  = 3\n", (2, 3), "expected a key, found `=`"),
            ("a = 1\n@@@\n", (2, 1), "unexpected character `@`"),
            ("Name = 'x'", (1, 1), "keys are lowercase"),
            ("memory = 512 * 2", (1, 14), "unexpected character `*`"),
            ("kernel = os.path.join('a')", (1, 10), "bare word `os`"),
            ("x = (1, 2)", (1, 5), "not Python"),
            ("type = pv", (1, 8), "quote it: \"pv\""),
            (
                "a = 1\n\u{e9}t\u{e9} = 2",
                (2, 1),
                "unexpected character `\u{e9}`",
            ),
            ("a = '\u{e9}' b", (1, 9), "expected end of line"),
            ("a = 1\rb = 2", (1, 6), "unexpected character `\\r`"),
            ("[1]", (1, 1), "expected a key, found `[`"),
            ("a += ", (1, 6), "missing value"),
        ] {
            let (gl, gc, m) = err_at(text);
            assert_eq!((gl, gc), (l, c), "{text:?}: {m}");
            assert!(m.contains(needle), "{text:?}: {m}");
        }
    }

    #[test]
    fn error_display_has_file_line_column() {
        let e = parse("a = 1\nb c\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "<config>:2:3: expected `=` after key `b`, found word `c`"
        );
        let e = parse("kernel = 'k'\n").unwrap_err();
        assert_eq!(e.to_string(), "<config>: missing required key `name`");
    }

    #[test]
    fn pvh_and_hvm_are_refused_clearly() {
        for (line, col) in [
            ("type = \"hvm\"", 8),
            ("type = 'pvh'", 8),
            ("builder = \"hvm\"", 11),
        ] {
            let e = parse(&format!("{MIN}{line}\n")).unwrap_err();
            let s = e.to_string();
            assert!(s.contains("kxen runs PV guests only"), "{s}");
            assert!(s.starts_with(&format!("<config>:3:{col}:")), "{s}");
        }
        assert!(err_at(&format!("{MIN}type = \"hvmx\"\n"))
            .2
            .contains("invalid domain type"));
        assert!(err_at(&format!("{MIN}builder = \"linux\"\n"))
            .2
            .contains("invalid builder"));
        assert_eq!(
            ok(&format!("{MIN}builder = 'generic'\n")).type_,
            GuestType::Pv
        );
    }

    #[test]
    fn cmdline_takes_precedence_over_root_and_extra() {
        let base = MIN;
        let c = |extra: &str| ok(&format!("{base}{extra}")).cmdline;
        assert_eq!(
            c("cmdline = 'a=1'\nroot = '/dev/xvda1'\nextra = 'b=2'\n"),
            "a=1"
        );
        assert_eq!(
            c("root = '/dev/xvda1 ro'\nextra = 'console=hvc0'\n"),
            "root=/dev/xvda1 ro console=hvc0"
        );
        assert_eq!(c("root = '/dev/xvda1'\n"), "root=/dev/xvda1");
        assert_eq!(c("extra = 'console=hvc0'\n"), "console=hvc0");
        assert_eq!(c(""), "");
        assert_eq!(c("cmdline = ''\nextra = 'x'\n"), "");
    }

    #[test]
    fn required_keys_and_empty_values_are_errors() {
        assert!(matches!(
            parse("kernel = 'k'\n"),
            Err(ConfigError::Missing { key: "name", .. })
        ));
        assert!(matches!(
            parse("name = 'n'\n"),
            Err(ConfigError::Missing { key: "kernel", .. })
        ));
        let e = parse("name = 'n'\nbootloader = 'pygrub'\n").unwrap_err();
        assert!(e.to_string().contains("PV-GRUB"), "{e}");
        assert!(err_at("name = ''\nkernel = 'k'\n").2.contains("empty"));
        assert!(err_at("name = 'n'\nkernel = ''\n").2.contains("empty path"));
        assert!(err_at("name = ['n']\nkernel = 'k'\n")
            .2
            .contains("found a list"));
        // An empty ramdisk means none.
        assert_eq!(ok(&format!("{MIN}ramdisk = ''\n")).ramdisk, None);
    }

    #[test]
    fn relative_paths_resolve_against_base_dir_absolute_paths_stay() {
        let c = parse_config(
            "name='n'\nkernel='../k/vmlinuz'\nramdisk='/boot/initrd'\n",
            Path::new("/etc/kxen"),
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/etc/kxen/../k/vmlinuz"));
        assert_eq!(c.ramdisk, Some(PathBuf::from("/boot/initrd")));
    }

    #[test]
    fn kxen_extensions_validate() {
        assert!(!ok(&format!("{MIN}privileged = 0\n")).privileged);
        assert!(ok(&format!("{MIN}privileged = 2\n")).privileged);
        assert!(err_at(&format!("{MIN}privileged = 'yes'\n"))
            .2
            .contains("not a valid number"));
        assert_eq!(
            ok(&format!("{MIN}pte_abi = 'kxen'\n")).pte_abi.as_deref(),
            Some("kxen")
        );
        assert!(err_at(&format!("{MIN}pte_abi = 'linux'\n"))
            .2
            .contains("unknown page-table ABI"));
        assert!(ok(MIN).cpuid_freq_leaf, "on unless turned off");
        assert!(!ok(&format!("{MIN}cpuid_freq_leaf = 0\n")).cpuid_freq_leaf);
        assert!(ok(&format!("{MIN}cpuid_freq_leaf = 1\n")).cpuid_freq_leaf);
        let (_, _, msg) = err_at(&format!("{MIN}cpuid_freq_leaf = 'off'\n"));
        assert!(msg.contains("not a valid number"), "{msg}");
        assert!(ok(&format!("{MIN}cpuid_freq_leaf = 0\n"))
            .unknown
            .is_empty());
    }

    #[test]
    fn unknown_keys_are_collected_once_in_order() {
        let c = ok(&format!(
            "{MIN}vif = ['bridge=br0']\ndisk = []\nvif = []\nserial = 'pty'\n"
        ));
        assert_eq!(c.unknown, ["vif", "disk", "serial"]);
    }

    #[test]
    fn one_megabyte_of_garbage_is_an_error_not_a_panic() {
        let mut seed: u32 = 0x1234_5678;
        let mut bytes = Vec::with_capacity(1 << 20);
        for _ in 0..(1 << 20) {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            bytes.push((seed >> 16) as u8);
        }
        let text = String::from_utf8_lossy(&bytes);
        assert!(parse(&text).is_err());
        // Garbage made only of the grammar's own tokens.
        let alphabet: &[&str] = &["[", "]", ",", "=", "+=", ";", "\n", "a", "1", "'s'", " "];
        let mut text = String::new();
        while text.len() < (1 << 20) {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            text.push_str(alphabet[(seed >> 16) as usize % alphabet.len()]);
        }
        assert!(parse(&text).is_err());
        // A megabyte of one long valid list is fine.
        let big = format!("{MIN}x = [{}]\n", "'y',".repeat(200_000));
        assert_eq!(ok(&big).unknown, ["x"]);
    }

    #[test]
    fn fuzzed_prefixes_of_a_real_config_never_panic() {
        let real = include_str!("../../resources/debian-pv.cfg");
        for end in 0..real.len() {
            if real.is_char_boundary(end) {
                let _ = parse(&real[..end]);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("a = {}", "[".repeat(1_000_000));
        let (l, c, m) = err_at(&deep);
        assert_eq!((l, c), (1, 5 + MAX_LIST_DEPTH));
        assert!(m.contains("nested more than"), "{m}");
        let ok_depth = format!(
            "{MIN}a = {}{}",
            "[".repeat(MAX_LIST_DEPTH),
            "]".repeat(MAX_LIST_DEPTH)
        );
        assert_eq!(ok(&ok_depth).unknown, ["a"]);
    }

    #[test]
    fn resources_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources");
        let demo = load_config(&dir.join("demo.cfg")).unwrap();
        assert_eq!(demo.name, "kxen-demo");
        assert_eq!(demo.kernel, dir.join("demo.elf"));
        assert_eq!((demo.memory_mib, demo.vcpus), (64, 1));
        assert_eq!(demo.cmdline, "console=hvc0");
        assert_eq!(
            (demo.on_poweroff, demo.on_crash),
            (Action::Destroy, Action::Destroy)
        );
        assert!(demo.unknown.is_empty(), "{:?}", demo.unknown);

        let deb = load_config(&dir.join("debian-pv.cfg")).unwrap();
        assert_eq!(deb.kernel, dir.join("../target/assets/vmlinuz-cloud"));
        assert_eq!(deb.ramdisk, Some(dir.join("../target/assets/initrd.img")));
        assert_eq!((deb.memory_mib, deb.vcpus), (512, 1));
        assert_eq!(deb.cmdline, "console=hvc0 earlyprintk=xen");
        assert_eq!(deb.on_crash, Action::Destroy);
        assert!(deb.unknown.contains(&"disk".to_string()));
        assert!(deb.unknown.contains(&"vif".to_string()));
    }

    #[test]
    fn load_config_reports_io_and_encoding_errors() {
        let dir = std::env::temp_dir().join(format!("kxen-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = load_config(&dir.join("nope.cfg")).unwrap_err();
        assert!(matches!(missing, ConfigError::Io { .. }), "{missing}");
        let bad = dir.join("bad.cfg");
        std::fs::write(&bad, b"name = 'x'\nkernel = '\xff'\n").unwrap();
        let e = load_config(&bad).unwrap_err();
        assert!(
            e.to_string()
                .ends_with(":2:11: config file is not valid UTF-8"),
            "{e}"
        );
        let big = dir.join("big.cfg");
        std::fs::write(&big, vec![b'\n'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        assert!(matches!(
            load_config(&big),
            Err(ConfigError::TooLarge { .. })
        ));
        let good = dir.join("good.cfg");
        std::fs::write(&good, "name = 'x'\nkernel = 'vmlinuz'\n").unwrap();
        assert_eq!(load_config(&good).unwrap().kernel, dir.join("vmlinuz"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
