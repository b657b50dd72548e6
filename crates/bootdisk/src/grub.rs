//! GRUB 2's grub.cfg, as Debian's update-grub (grub-mkconfig) writes it: which entry boots
//! by default and what its `linux` and `initrd` lines say. The script is tokenized with
//! GRUB's quoting rules but never run: see the crate docs for what that means.

use std::collections::HashMap;

/// Largest grub.cfg (or loader entry) taken.
pub const MAX_CONFIG: usize = 4 << 20;
/// Longest line taken.
pub const MAX_LINE: usize = 64 << 10;
/// Deepest nesting of `{ }` blocks taken.
pub const MAX_NESTING: usize = 32;
/// Most words in one grub.cfg (a real one has a few thousand).
pub const MAX_WORDS: usize = 1 << 18;
/// Bytes all variable expansions of one grub.cfg may produce together: `set a="$a$a"`
/// repeated must not double its way through memory.
pub const MAX_EXPANDED: usize = 16 << 20;
/// Most `>`-separated parts of a `default` value taken.
const MAX_DEFAULT_PARTS: usize = 16;

/// The entry a boot config says to boot. Paths are as the config writes them, minus a GRUB
/// device prefix such as `(hd0,gpt1)` or `($root)`: relative to the root of the filesystem
/// the config's `root` is (the /boot partition when /boot is separate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The menu title (BLS: `title`, else the file name).
    pub title: String,
    /// The entry's id: `--id` of a menuentry, the file name without `.conf` of a BLS entry.
    pub id: Option<String>,
    /// The kernel image path.
    pub kernel: String,
    /// The initrd paths, in order: GRUB loads them back to back as one initrd.
    pub initrd: Vec<String>,
    /// The kernel command line.
    pub options: String,
}

/// Why a boot config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{what}: line {line} is longer than {max} bytes")]
    LineTooLong {
        what: &'static str,
        line: usize,
        max: usize,
    },
    #[error("grub.cfg: more than {max} words")]
    TooManyWords { max: usize },
    #[error("{what}: variables expand to more than {max} bytes")]
    ExpansionTooLarge { what: &'static str, max: usize },
    #[error("grub.cfg: line {line}: unterminated {quote} quote")]
    Unterminated { line: usize, quote: &'static str },
    #[error("grub.cfg: line {line}: '}}' closes no block")]
    UnbalancedClose { line: usize },
    #[error("grub.cfg: line {line}: blocks nested deeper than {MAX_NESTING}")]
    TooDeep { line: usize },
    #[error("grub.cfg: the block opened at line {line} is never closed")]
    Unclosed { line: usize },
    #[error("{what}: no menuentry")]
    NoEntry { what: &'static str },
    #[error("{what}: entry '{title}' has no linux line")]
    NoKernel { what: &'static str, title: String },
}

/// Refuses a config above [`MAX_CONFIG`] or with a line above [`MAX_LINE`].
pub(crate) fn check_size(what: &'static str, text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_CONFIG {
        return Err(ConfigError::TooLarge {
            what,
            size: text.len(),
            max: MAX_CONFIG,
        });
    }
    for (i, line) in text.split('\n').enumerate() {
        if line.len() > MAX_LINE {
            return Err(ConfigError::LineTooLong {
                what,
                line: i + 1,
                max: MAX_LINE,
            });
        }
    }
    Ok(())
}

/// The variables of a grubenv file (`name=value` lines padded with `#`), `next_entry` left
/// out: a one-shot choice is not honoured.
pub(crate) fn grubenv_vars(env: Option<&str>) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for line in env.unwrap_or_default().lines().take(1024) {
        if line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.split_once('=')
            && name != "next_entry"
            && !value.is_empty()
        {
            vars.insert(name.to_owned(), value.to_owned());
        }
    }
    vars
}

/// `$name` and `${name}` in `text` replaced from `vars`; unknown variables expand to nothing,
/// as in GRUB. `None` when the result would pass `max` bytes.
pub(crate) fn expand_vars(
    text: &str,
    vars: &HashMap<String, String>,
    max: usize,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
        } else {
            match read_var(&mut chars) {
                Some(name) => out.push_str(vars.get(&name).map_or("", String::as_str)),
                None => out.push('$'),
            }
        }
        if out.len() > max {
            return None;
        }
    }
    Some(out)
}

/// Variables, and what is left of the bytes their expansions may produce.
struct Env {
    vars: HashMap<String, String>,
    left: usize,
}

impl Env {
    /// The value of `name` (empty when unset), charged to the expansion budget.
    fn value(&mut self, name: &str) -> Result<&str, ConfigError> {
        let value = self.vars.get(name).map_or("", String::as_str);
        self.left = self
            .left
            .checked_sub(value.len())
            .ok_or(ConfigError::ExpansionTooLarge {
                what: "grub.cfg",
                max: MAX_EXPANDED,
            })?;
        Ok(value)
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The name after a `$`, or `None` when what follows is no variable (the `$` is literal).
fn read_var(chars: &mut Chars<'_>) -> Option<String> {
    match chars.peek().copied() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
            Some(name)
        }
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                name.push(c);
                chars.next();
            }
            Some(name)
        }
        Some(c @ ('?' | '#' | '@' | '*')) => {
            chars.next();
            Some(c.to_string())
        }
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    /// A variable reference; `true` when unquoted, so its value splits into words.
    Var(String, bool),
}

#[derive(Debug, Clone, Default)]
struct Word {
    segs: Vec<Seg>,
    quoted: bool,
}

impl Word {
    fn push_char(&mut self, c: char) {
        if let Some(Seg::Lit(s)) = self.segs.last_mut() {
            s.push(c);
        } else {
            self.segs.push(Seg::Lit(c.to_string()));
        }
    }

    /// The word when it is one unquoted literal (`{`, `}`, a command name).
    fn bare(&self) -> Option<&str> {
        match self.segs.as_slice() {
            [Seg::Lit(s)] if !self.quoted => Some(s),
            _ => None,
        }
    }

    /// Whether the word is exactly `$name` (or `${name}`), unquoted.
    fn is_var(&self, name: &str) -> bool {
        matches!(self.segs.as_slice(), [Seg::Var(v, _)] if v == name && !self.quoted)
    }

    /// The word as one string (titles, ids, assignments).
    fn expand(&self, env: &mut Env) -> Result<String, ConfigError> {
        let mut out = String::new();
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Var(v, _) => out.push_str(env.value(v)?),
            }
        }
        Ok(out)
    }

    /// The arguments the word becomes: unquoted variables split at whitespace, and an
    /// unquoted word that expands to nothing is no argument, as in GRUB.
    fn fields(&self, env: &mut Env) -> Result<Vec<String>, ConfigError> {
        let mut out = vec![String::new()];
        let mut any = self.quoted;
        for seg in &self.segs {
            let (text, split) = match seg {
                Seg::Lit(s) => (s.as_str(), false),
                Seg::Var(v, split) => (env.value(v)?, *split),
            };
            if !split {
                any |= !text.is_empty();
                if let Some(last) = out.last_mut() {
                    last.push_str(text);
                }
                continue;
            }
            for (i, piece) in text.split_whitespace().enumerate() {
                if i > 0 {
                    out.push(String::new());
                }
                any = true;
                if let Some(last) = out.last_mut() {
                    last.push_str(piece);
                }
            }
        }
        if !any {
            out.clear();
        }
        Ok(out)
    }
}

#[derive(Debug)]
enum Tok {
    Word(Word, usize),
    Sep,
}

/// Splits grub.cfg into words and command separators (newline, `;`), with GRUB's quoting:
/// `'...'` literal, `"..."` with `\` escaping `$ " \` and newline, `\` outside quotes, `#`
/// comments at the start of a word, `$var` and `${var}` kept as variable references.
fn lex(text: &str) -> Result<Vec<Tok>, ConfigError> {
    let mut toks = Vec::new();
    let mut chars: Chars<'_> = text.chars().peekable();
    let mut line = 1usize;
    let mut cur: Option<Word> = None;
    let mut words = 0usize;
    let mut finish = |cur: &mut Option<Word>, toks: &mut Vec<Tok>, line: usize| {
        if let Some(w) = cur.take() {
            words += 1;
            if words > MAX_WORDS {
                return Err(ConfigError::TooManyWords { max: MAX_WORDS });
            }
            toks.push(Tok::Word(w, line));
        }
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' => finish(&mut cur, &mut toks, line)?,
            '\n' | ';' => {
                finish(&mut cur, &mut toks, line)?;
                toks.push(Tok::Sep);
                if c == '\n' {
                    line += 1;
                }
            }
            '#' if cur.is_none() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(x) => cur.get_or_insert_default().push_char(x),
                None => cur.get_or_insert_default().push_char('\\'),
            },
            '\'' => {
                let start = line;
                let w = cur.get_or_insert_default();
                w.quoted = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(ConfigError::Unterminated {
                                line: start,
                                quote: "single",
                            });
                        }
                        Some('\'') => break,
                        Some(x) => {
                            if x == '\n' {
                                line += 1;
                            }
                            w.push_char(x);
                        }
                    }
                }
            }
            '"' => {
                let start = line;
                let w = cur.get_or_insert_default();
                w.quoted = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(ConfigError::Unterminated {
                                line: start,
                                quote: "double",
                            });
                        }
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('$' | '"' | '\\')) => w.push_char(x),
                            Some('\n') => line += 1,
                            Some(x) => {
                                w.push_char('\\');
                                w.push_char(x);
                            }
                            None => w.push_char('\\'),
                        },
                        Some('$') => match read_var(&mut chars) {
                            Some(name) => w.segs.push(Seg::Var(name, false)),
                            None => w.push_char('$'),
                        },
                        Some(x) => {
                            if x == '\n' {
                                line += 1;
                            }
                            w.push_char(x);
                        }
                    }
                }
            }
            '$' => {
                let w = cur.get_or_insert_default();
                match read_var(&mut chars) {
                    Some(name) => w.segs.push(Seg::Var(name, true)),
                    None => w.push_char('$'),
                }
            }
            _ => cur.get_or_insert_default().push_char(c),
        }
    }
    finish(&mut cur, &mut toks, line)?;
    Ok(toks)
}

#[derive(Debug)]
enum Cmd {
    /// A command line.
    Simple(Vec<Word>),
    /// A command line ending in `{`: `menuentry ... {`, `submenu ... {`, `function f {`.
    Open(Vec<Word>, usize),
    /// `}`.
    Close(usize),
}

fn commands(toks: Vec<Tok>) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    for tok in toks {
        match tok {
            Tok::Sep => {
                if !words.is_empty() {
                    out.push(Cmd::Simple(std::mem::take(&mut words)));
                }
            }
            Tok::Word(w, line) => match w.bare() {
                Some("{") => out.push(Cmd::Open(std::mem::take(&mut words), line)),
                Some("}") => {
                    if !words.is_empty() {
                        out.push(Cmd::Simple(std::mem::take(&mut words)));
                    }
                    out.push(Cmd::Close(line));
                }
                _ => words.push(w),
            },
        }
    }
    if !words.is_empty() {
        out.push(Cmd::Simple(words));
    }
    out
}

#[derive(Debug, Default)]
struct Entry {
    title: String,
    id: Option<String>,
    /// The first `linux` line: path, then arguments.
    linux: Option<Vec<String>>,
    /// The first `initrd` line's paths.
    initrd: Option<Vec<String>>,
}

#[derive(Debug)]
enum Item {
    Entry(Entry),
    Menu {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
    },
}

impl Item {
    fn matches(&self, name: &str) -> bool {
        let (title, id) = match self {
            Item::Entry(e) => (&e.title, &e.id),
            Item::Menu { title, id, .. } => (title, id),
        };
        title == name || id.as_deref() == Some(name)
    }
}

#[derive(Debug)]
enum Frame {
    Menu {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
        line: usize,
    },
    Entry(Entry, usize),
    /// A function body or another block whose commands are not run.
    Other(usize),
}

/// Title and `--id` of `menuentry`/`submenu` arguments: the first argument that is not an
/// option is the title; `$menuentry_id_option` (which Debian sets to `--id`) and `--id` take
/// the next one as the id.
fn title_and_id(args: &[Word], env: &mut Env) -> Result<(String, Option<String>), ConfigError> {
    let mut title = None;
    let mut id = None;
    let mut it = args.iter();
    while let Some(w) = it.next() {
        let value = if w.is_var("menuentry_id_option") {
            "--id".to_owned()
        } else {
            w.expand(env)?
        };
        match value.as_str() {
            "--id" => id = it.next().map(|w| w.expand(env)).transpose()?,
            "--class" | "--users" | "--hotkey" | "--source" => {
                it.next();
            }
            v if v.starts_with("--id=") => id = v.strip_prefix("--id=").map(str::to_owned),
            v if v.starts_with("--") => {}
            _ if title.is_none() => title = Some(value),
            _ => {}
        }
    }
    Ok((title.unwrap_or_default(), id))
}

/// An assignment: `set name=value` or a bare `name=value` command.
fn assignment(words: &[Word], env: &mut Env) -> Result<Option<(String, String)>, ConfigError> {
    let text = match words {
        [cmd, arg] if cmd.bare() == Some("set") => arg.expand(env)?,
        [only] => {
            let text = only.expand(env)?;
            let name = text.split('=').next().unwrap_or_default();
            if !text.contains('=')
                || name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || matches!(only.segs.first(), Some(Seg::Var(..)))
            {
                return Ok(None);
            }
            text
        }
        _ => return Ok(None),
    };
    Ok(text
        .split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned())))
}

/// The default entry of `cfg` (grub.cfg text); `grubenv` is the text of the grubenv file next
/// to it, if any, for `saved_entry` and other saved variables.
///
/// What is chosen, as GRUB would with no key pressed (choices documented in the crate docs):
/// `default` is the last non-empty value assigned at the top level (`if`/`else` are not
/// evaluated; `${next_entry}` is ignored); `saved` means grubenv's `saved_entry`. The value is
/// a `>`-separated path, each part an index (counting submenus) or a title or `--id`. A value
/// that names nothing falls back to the first entry, as GRUB does; a submenu chosen without a
/// further part boots its first entry.
pub fn grub_default_entry(cfg: &str, grubenv: Option<&str>) -> Result<BootEntry, ConfigError> {
    check_size("grub.cfg", cfg)?;
    let mut env = Env {
        vars: grubenv_vars(grubenv),
        left: MAX_EXPANDED,
    };
    let mut default: Option<String> = None;
    let mut stack = vec![Frame::Menu {
        title: String::new(),
        id: None,
        items: Vec::new(),
        line: 0,
    }];
    for cmd in commands(lex(cfg)?) {
        match cmd {
            Cmd::Simple(mut words) => {
                // `then set x=1` on one line: the keyword is no command of its own here.
                let keywords = words
                    .iter()
                    .take_while(|w| matches!(w.bare(), Some("then" | "else" | "do")))
                    .count();
                words.drain(..keywords);
                let top_level = stack.len() == 1;
                match stack.last_mut() {
                    Some(Frame::Menu { .. }) => {
                        if let Some((name, value)) = assignment(&words, &mut env)? {
                            if value.is_empty() {
                                continue;
                            }
                            if name == "default" {
                                if top_level {
                                    default = Some(value);
                                }
                            } else {
                                env.vars.insert(name, value);
                            }
                        }
                    }
                    Some(Frame::Entry(entry, _)) => {
                        let name = words.first().and_then(Word::bare).unwrap_or_default();
                        let slot = match name {
                            "linux" | "linux16" | "linuxefi" => &mut entry.linux,
                            "initrd" | "initrd16" | "initrdefi" => &mut entry.initrd,
                            _ => continue,
                        };
                        if slot.is_some() {
                            continue;
                        }
                        let mut args = Vec::new();
                        for w in words.iter().skip(1) {
                            args.extend(w.fields(&mut env)?);
                        }
                        *slot = Some(args);
                    }
                    _ => {}
                }
            }
            Cmd::Open(words, line) => {
                if stack.len() > MAX_NESTING {
                    return Err(ConfigError::TooDeep { line });
                }
                let in_menu = matches!(stack.last(), Some(Frame::Menu { .. }));
                let name = words.first().and_then(Word::bare);
                let args = words.get(1..).unwrap_or_default();
                let frame = match name {
                    Some("menuentry") if in_menu => {
                        let (title, id) = title_and_id(args, &mut env)?;
                        Frame::Entry(
                            Entry {
                                title,
                                id,
                                ..Entry::default()
                            },
                            line,
                        )
                    }
                    Some("submenu") if in_menu => {
                        let (title, id) = title_and_id(args, &mut env)?;
                        Frame::Menu {
                            title,
                            id,
                            items: Vec::new(),
                            line,
                        }
                    }
                    _ => Frame::Other(line),
                };
                stack.push(frame);
            }
            Cmd::Close(line) => {
                if stack.len() == 1 {
                    return Err(ConfigError::UnbalancedClose { line });
                }
                let item = match stack.pop() {
                    Some(Frame::Entry(entry, _)) => Item::Entry(entry),
                    Some(Frame::Menu {
                        title, id, items, ..
                    }) => Item::Menu { title, id, items },
                    _ => continue,
                };
                if let Some(Frame::Menu { items, .. }) = stack.last_mut() {
                    items.push(item);
                }
            }
        }
    }
    if stack.len() > 1 {
        let line = match stack.last() {
            Some(Frame::Entry(_, line) | Frame::Other(line) | Frame::Menu { line, .. }) => *line,
            None => 0,
        };
        return Err(ConfigError::Unclosed { line });
    }
    let Some(Frame::Menu { items, .. }) = stack.pop() else {
        return Err(ConfigError::NoEntry { what: "grub.cfg" });
    };
    let spec = match default.as_deref() {
        Some("saved") => env.vars.get("saved_entry").cloned().unwrap_or_default(),
        Some(v) => v.to_owned(),
        None => String::new(),
    };
    let entry = resolve(&items, &spec)
        .or_else(|| first_entry(&items))
        .ok_or(ConfigError::NoEntry { what: "grub.cfg" })?;
    let Some(linux) = entry.linux.as_ref().filter(|args| !args.is_empty()) else {
        return Err(ConfigError::NoKernel {
            what: "grub.cfg",
            title: entry.title.clone(),
        });
    };
    let kernel = linux.first().map(|p| strip_device(p)).unwrap_or_default();
    Ok(BootEntry {
        title: entry.title.clone(),
        id: entry.id.clone(),
        kernel,
        initrd: entry
            .initrd
            .iter()
            .flatten()
            .map(|p| strip_device(p))
            .collect(),
        options: join_args(linux.get(1..).unwrap_or_default()),
    })
}

/// Splits a `default` value at `>`, `>>` standing for a literal `>`.
fn split_default(spec: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '>' {
            if chars.peek() == Some(&'>') {
                chars.next();
            } else {
                parts.push(String::new());
                continue;
            }
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn resolve<'m>(items: &'m [Item], spec: &str) -> Option<&'m Entry> {
    let parts = split_default(spec);
    if parts.len() > MAX_DEFAULT_PARTS {
        return None;
    }
    let mut level = items;
    for (k, part) in parts.iter().enumerate() {
        let item = if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<usize>().ok().and_then(|n| level.get(n))
        } else {
            level.iter().find(|it| it.matches(part))
        }?;
        match item {
            // GRUB boots an entry even when the value goes on past it.
            Item::Entry(e) => return Some(e),
            Item::Menu { items, .. } => {
                if k + 1 == parts.len() {
                    return first_entry(items);
                }
                level = items;
            }
        }
    }
    None
}

/// The first entry, descending into submenus (nesting is bounded by [`MAX_NESTING`]).
fn first_entry(items: &[Item]) -> Option<&Entry> {
    let mut level = items;
    loop {
        match level.first()? {
            Item::Entry(e) => return Some(e),
            Item::Menu { items, .. } => level = items,
        }
    }
}

/// A path without GRUB's device prefix (`(hd0,gpt1)/boot/x` is `/boot/x`), always absolute.
pub(crate) fn strip_device(path: &str) -> String {
    let rest = match path.strip_prefix('(').and_then(|p| p.split_once(')')) {
        Some((_, rest)) => rest,
        None => path,
    };
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

/// Kernel arguments joined by spaces; an argument holding whitespace is double-quoted, as the
/// kernel's command-line parser expects.
fn join_args(args: &[String]) -> String {
    let mut out = String::new();
    for arg in args.iter().filter(|a| !a.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        if arg.chars().any(char::is_whitespace) {
            out.push('"');
            out.push_str(arg);
            out.push('"');
        } else {
            out.push_str(arg);
        }
    }
    out
}
