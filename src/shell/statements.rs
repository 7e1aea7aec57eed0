//! Splitting shell input into statements: SQL ends at a `;` outside quotes and comments; a line
//! starting with `\` (outside a statement) is a meta-command and needs no `;`.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{
    Location, Token, TokenWithSpan, Tokenizer, TokenizerError,
};

/// One unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// SQL text without its terminating `;`.
    Sql(String),
    /// A meta-command line, e.g. `\d features`.
    Meta(String),
}

/// Accumulates lines and hands out complete items; what is left is an unfinished statement.
/// Where a statement ends is the SQL tokenizer's call (sqlparser, the one DataFusion parses
/// with): the first `;` token, so quotes, quoted identifiers, escapes and comments are read as
/// the engine reads them.
#[derive(Debug, Default)]
pub struct Splitter {
    buffer: String,
}

impl Splitter {
    /// True when no statement is in progress (the REPL shows its main prompt); comments alone do
    /// not start one.
    pub fn is_empty(&self) -> bool {
        // inside a string, quoted name or comment is not blank
        is_blank_sql(&self.buffer)
    }

    /// Drops the statement in progress (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }

    /// Feeds one line (without its newline) and returns the items it completed.
    pub fn push_line(&mut self, line: &str) -> Vec<Item> {
        if self.is_empty() && line.trim_start().starts_with('\\') {
            self.buffer.clear();
            return vec![Item::Meta(line.trim().to_string())];
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        let mut items = Vec::new();
        while let Some(end) = first_semicolon(&self.buffer) {
            let rest = self.buffer.split_off(end + 1);
            self.buffer.pop(); // the `;`
            let sql = std::mem::replace(&mut self.buffer, rest);
            if !is_blank_sql(&sql) {
                items.push(Item::Sql(sql.trim().to_string()));
            }
            // `SELECT 1; \d` on one line: a meta-command may follow a statement
            if self.buffer.trim_start().starts_with('\\') {
                items.push(Item::Meta(self.buffer.trim().to_string()));
                self.buffer.clear();
                break;
            }
        }
        items
    }

    /// The unfinished statement at the end of the input (a script's last statement may omit `;`).
    pub fn finish(&mut self) -> Option<Item> {
        let sql = std::mem::take(&mut self.buffer);
        (!is_blank_sql(&sql)).then(|| Item::Sql(sql.trim().to_string()))
    }
}

fn tokens(sql: &str) -> Result<Vec<TokenWithSpan>, TokenizerError> {
    Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location()
}

/// The byte offset of the first `;` token of `sql`. Text that ends inside a string, a quoted
/// name or a comment (the tokenizer's error) can only end a statement before that construct.
fn first_semicolon(sql: &str) -> Option<usize> {
    match tokens(sql) {
        Ok(tokens) => tokens
            .iter()
            .find(|t| t.token == Token::SemiColon)
            .and_then(|t| offset(sql, t.span.start)),
        Err(e) => match offset(sql, e.location) {
            Some(unterminated) if unterminated < sql.len() => first_semicolon(&sql[..unterminated]),
            _ => None,
        },
    }
}

/// The byte offset of a tokenizer location (1-based line and character column).
fn offset(sql: &str, at: Location) -> Option<usize> {
    let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let start: usize = sql.split('\n').take(line).map(|l| l.len() + 1).sum();
    let text = sql.get(start..)?;
    Some(
        start
            + text
                .char_indices()
                .nth(column)
                .map_or(text.len(), |(i, _)| i),
    )
}

/// Only whitespace and complete comments.
fn is_blank_sql(sql: &str) -> bool {
    tokens(sql).is_ok_and(|tokens| {
        tokens
            .iter()
            .all(|t| matches!(t.token, Token::Whitespace(_) | Token::EOF))
    })
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

    #[test]
    fn a_statement_before_an_unterminated_string_is_complete() {
        let mut s = Splitter::default();
        assert_eq!(s.push_line("SELECT 1; SELECT 'a"), vec![sql("SELECT 1")]);
        assert!(!s.is_empty());
        assert!(
            s.push_line("/* ; */ b;").is_empty(),
            "still inside the string"
        );
        assert_eq!(
            s.push_line("c' AS x;"),
            vec![sql("SELECT 'a\n/* ; */ b;\nc' AS x")]
        );
        assert!(s.is_empty());
        // unterminated block comment: nothing ends until it closes
        assert!(s.push_line("SELECT 2 /* ;").is_empty());
        assert_eq!(s.push_line("*/;"), vec![sql("SELECT 2 /* ;\n*/")]);
    }
}
