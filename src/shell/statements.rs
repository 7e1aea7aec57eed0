//! Splitting shell input into statements: SQL ends at a `;` outside quotes and comments; a line
//! starting with `\` (outside a statement) is a meta-command and needs no `;`.

/// One unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// SQL text without its terminating `;`.
    Sql(String),
    /// A meta-command line, e.g. `\d features`.
    Meta(String),
}

/// Accumulates lines and hands out complete items; what is left is an unfinished statement.
#[derive(Debug, Default)]
pub struct Splitter {
    buffer: String,
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Code,
    /// Inside '...'.
    String,
    /// Inside "...".
    Identifier,
    /// Inside -- ... up to the end of the line.
    LineComment,
    /// Inside /* ... */.
    BlockComment,
}

impl Splitter {
    /// True when no statement is in progress (the REPL shows its main prompt); comments alone do
    /// not start one.
    pub fn is_empty(&self) -> bool {
        self.state == State::Code && is_blank_sql(&self.buffer)
    }

    /// Drops the statement in progress (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.state = State::Code;
    }

    /// Feeds one line (without its newline) and returns the items it completed.
    pub fn push_line(&mut self, line: &str) -> Vec<Item> {
        if self.is_empty() && line.trim_start().starts_with('\\') {
            self.buffer.clear();
            return vec![Item::Meta(line.trim().to_string())];
        }
        let mut items = Vec::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match self.state {
                State::Code => match c {
                    ';' => {
                        let sql = std::mem::take(&mut self.buffer);
                        if !is_blank_sql(&sql) {
                            items.push(Item::Sql(sql.trim().to_string()));
                        }
                        // `SELECT 1; \d` on one line: a meta-command may follow a statement
                        let rest: String = chars.clone().collect();
                        if rest.trim_start().starts_with('\\') {
                            items.push(Item::Meta(rest.trim().to_string()));
                            return items;
                        }
                        continue;
                    }
                    '\'' => self.state = State::String,
                    '"' => self.state = State::Identifier,
                    '-' if chars.peek() == Some(&'-') => self.state = State::LineComment,
                    '/' if chars.peek() == Some(&'*') => {
                        self.buffer.push(c);
                        self.buffer.push(chars.next().expect("peeked"));
                        self.state = State::BlockComment;
                        continue;
                    }
                    _ => {}
                },
                State::String if c == '\'' => self.state = State::Code,
                State::Identifier if c == '"' => self.state = State::Code,
                State::BlockComment if c == '*' && chars.peek() == Some(&'/') => {
                    self.buffer.push(c);
                    self.buffer.push(chars.next().expect("peeked"));
                    self.state = State::Code;
                    continue;
                }
                _ => {}
            }
            self.buffer.push(c);
        }
        if self.state == State::LineComment {
            self.state = State::Code;
        }
        self.buffer.push('\n');
        items
    }

    /// The unfinished statement at the end of the input (a script's last statement may omit `;`).
    pub fn finish(&mut self) -> Option<Item> {
        let sql = std::mem::take(&mut self.buffer);
        self.state = State::Code;
        (!is_blank_sql(&sql)).then(|| Item::Sql(sql.trim().to_string()))
    }
}

/// Only whitespace and comments.
fn is_blank_sql(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest.is_empty();
        }
    }
}

/// Splits a whole script.
pub fn split(script: &str) -> Vec<Item> {
    let mut splitter = Splitter::default();
    let mut items: Vec<Item> = script
        .lines()
        .flat_map(|line| splitter.push_line(line))
        .collect();
    items.extend(splitter.finish());
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> Item {
        Item::Sql(s.to_string())
    }

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let items = split(
            "SELECT 'a;b' AS \"x;y\"; -- trailing; comment\nSELECT 2 /* ; */\n  ;\n\\d features\nSELECT 3; \\sql prior",
        );
        assert_eq!(
            items,
            vec![
                sql("SELECT 'a;b' AS \"x;y\""),
                sql("-- trailing; comment\nSELECT 2 /* ; */"),
                Item::Meta("\\d features".into()),
                sql("SELECT 3"),
                Item::Meta("\\sql prior".into()),
            ]
        );
    }

    #[test]
    fn doubled_quotes_and_multi_line_strings() {
        let items = split("SELECT 'it''s; fine',\n'two\nlines;' ;");
        assert_eq!(items, vec![sql("SELECT 'it''s; fine',\n'two\nlines;'")]);
    }

    #[test]
    fn incomplete_statement_waits_for_more_lines() {
        let mut s = Splitter::default();
        assert!(s.push_line("SELECT").is_empty());
        assert!(!s.is_empty());
        // a backslash inside a statement is SQL, not a meta-command
        assert!(s.push_line("  '\\d' AS x").is_empty());
        assert_eq!(s.push_line("; SELECT"), vec![sql("SELECT\n  '\\d' AS x")]);
        assert_eq!(s.finish(), Some(sql("SELECT")));
        assert!(s.is_empty());
    }

    #[test]
    fn a_meta_command_may_follow_comment_lines() {
        let items = split("-- header of a script\n/* more */\n\\d history\nSELECT 1;");
        assert_eq!(
            items,
            vec![Item::Meta("\\d history".into()), sql("SELECT 1")]
        );
    }

    #[test]
    fn empty_statements_and_comments_are_skipped() {
        assert!(split(";;\n-- only a comment\n/* block */;").is_empty());
    }
}
