//! The statements and expressions of ksqlDB's dialect, parsed by recursive
//! descent from `lexer` tokens. Errors name the line and what was expected.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::lexer::{line_of, tokenize, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stream,
    Table,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlType {
    Int,
    BigInt,
    Double,
    String,
    Boolean,
    Decimal {
        precision: u32,
        scale: u32,
    },
    Bytes,
    Timestamp,
    Date,
    Time,
    Array(Box<SqlType>),
    Map(Box<SqlType>, Box<SqlType>),
    /// Fields in declaration order; names as written (unquoted ones upper-cased).
    Struct(Vec<(String, SqlType)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    pub key: bool,
}

/// `WITH (...)` properties, names upper-cased.
pub type Properties = Vec<(String, Value)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateSource {
        kind: SourceKind,
        name: String,
        columns: Vec<ColumnDef>,
        properties: Properties,
        /// `CREATE OR REPLACE`: redefine an existing stream or table.
        or_replace: bool,
        /// `CREATE SOURCE`: read-only, no INSERT, ALTER or REPLACE.
        read_only: bool,
    },
    CreateAs {
        kind: SourceKind,
        name: String,
        properties: Properties,
        select: Select,
    },
    /// `INSERT INTO target SELECT ...`: another query writing into a stream.
    InsertInto {
        target: String,
        select: Select,
    },
    /// `INSERT INTO target [(columns)] VALUES (values)`: one record.
    InsertValues {
        target: String,
        columns: Option<Vec<String>>,
        values: Vec<Expr>,
    },
    /// `ALTER STREAM|TABLE name ADD [COLUMN] name type, ...`.
    Alter {
        kind: SourceKind,
        name: String,
        columns: Vec<ColumnDef>,
    },
    /// A transient `SELECT`: a push query with EMIT, else a pull query.
    Query(Select),
    /// `SET 'name' = 'value'`: a property for the queries started after it.
    Set {
        name: String,
        value: String,
    },
    Unset {
        name: String,
    },
    /// `SHOW` / `LIST` STREAMS, TABLES, TOPICS, QUERIES or PROPERTIES.
    Show(Listing),
    Describe {
        name: String,
        extended: bool,
    },
    Drop {
        kind: SourceKind,
        name: String,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `TERMINATE query_id`, or `TERMINATE ALL` (no id).
    Terminate {
        query: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Streams,
    Tables,
    Topics,
    Queries,
    Properties,
}

/// How a query emits: every change, or a window's final row once it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    Changes,
    Final,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub items: Vec<SelectItem>,
    pub from: String,
    pub window: Option<Window>,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    /// None when no EMIT clause was written (a transient SELECT is then a pull query).
    pub emit: Option<EmitMode>,
    pub limit: Option<u64>,
    /// `PARTITION BY`: the expressions a stream's rows are re-keyed by.
    pub partition_by: Vec<Expr>,
    /// The FROM source's alias (`FROM input i` or `FROM input AS i`).
    pub from_alias: Option<String>,
    /// The sources joined to the FROM source, in order.
    pub joins: Vec<Join>,
}

/// `[INNER | LEFT | FULL] JOIN source [alias] [WITHIN ..] ON condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub kind: JoinKind,
    pub source: String,
    pub alias: Option<String>,
    /// Stream-stream joins: how far (ms) the other side's record may be
    /// before and after this one's.
    pub within: Option<(i64, i64)>,
    pub on: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

/// `WINDOW TUMBLING (SIZE ..)`, `WINDOW HOPPING (SIZE .., ADVANCE BY ..)` or
/// `WINDOW SESSION (gap)`, in milliseconds; ksqlDB's default grace period is a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The size, or a session's inactivity gap.
    pub size: i64,
    pub advance: i64,
    pub grace: i64,
    pub session: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    All,
    /// `source.*`: every column of one source.
    AllOf(String),
    Expr {
        expr: Expr,
        alias: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column(String),
    Literal(Value),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`.
    Case {
        operand: Option<Box<Expr>>,
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast {
        expr: Box<Expr>,
        ty: SqlType,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        negated: bool,
        /// `ESCAPE 'c'`: the character that makes the next `%` or `_` literal.
        escape: Option<char>,
    },
    /// `base[index]`: an array element (from 1; negative from the end) or a map value.
    Subscript {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    /// `base->field`: a struct's field.
    Field {
        base: Box<Expr>,
        field: String,
    },
    /// `ARRAY[a, b, ..]`.
    Array(Vec<Expr>),
    /// `MAP(k := v, ..)`.
    Map(Vec<(Expr, Expr)>),
    /// `STRUCT(name := v, ..)`.
    Struct(Vec<(String, Expr)>),
    /// `x => body` or `(x, y) => body`, an argument of FILTER, TRANSFORM and the like.
    Lambda {
        params: Vec<String>,
        body: Box<Expr>,
    },
    /// `a IS [NOT] DISTINCT FROM b`: equality where two nulls are equal.
    DistinctFrom {
        left: Box<Expr>,
        right: Box<Expr>,
        negated: bool,
    },
    /// `source.column`: a column of one source (by name or alias).
    Qualified {
        source: String,
        column: String,
    },
    /// A function call; `COUNT(*)` has `star`.
    Function {
        name: String,
        args: Vec<Expr>,
        star: bool,
    },
}

/// Parses a script of `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    Ok(parse_with_text(sql)?.into_iter().map(|(s, _)| s).collect())
}

/// Parses a script of `;`-separated statements, each with its text as
/// written (through its `;`), which ksqlDB's REST entities echo back.
pub fn parse_with_text(sql: &str) -> Result<Vec<(Statement, String)>> {
    let mut parser = Parser {
        sql,
        tokens: tokenize(sql)?,
        at: 0,
    };
    let mut statements = Vec::new();
    while let Some(&(_, start)) = parser.tokens.get(parser.at) {
        if parser.eat_symbol(";") {
            continue;
        }
        let statement = parser.statement()?;
        if parser.peek().is_some() && !parser.eat_symbol(";") {
            return Err(parser.expected("';' after the statement"));
        }
        let end = match parser.tokens.get(parser.at) {
            Some(&(_, next)) => next,
            None => sql.len(),
        };
        statements.push((statement, sql[start..end].trim_end().to_string()));
    }
    Ok(statements)
}

/// Parses a column type as ksqlDB writes it (`BIGINT`, `DECIMAL(4, 2)`,
/// `STRUCT<A INT>`), such as the types a `/query-stream` header names.
pub fn parse_type(text: &str) -> Result<SqlType> {
    let mut parser = Parser {
        sql: text,
        tokens: tokenize(text)?,
        at: 0,
    };
    let ty = parser.sql_type()?;
    if parser.peek().is_some() {
        return Err(parser.expected("the end of the type"));
    }
    Ok(ty)
}

struct Parser<'a> {
    sql: &'a str,
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.0)
    }

    fn peek_is(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is(keyword))
    }

    fn expected(&self, what: &str) -> anyhow::Error {
        let found = self.tokens.get(self.at).map(|(t, _)| describe(t));
        self.syntax_error(&match found {
            Some(found) => format!("expected {what}, found {found}"),
            None => format!("expected {what} at the end of the statement"),
        })
    }

    /// `line L:C` of the current token (or the end), C counted from
    /// `first_column`, as ksqlDB's messages place errors.
    fn location(&self, first_column: usize) -> String {
        let position = self.tokens.get(self.at).map_or(self.sql.len(), |(_, p)| *p);
        let line_start = self.sql[..position].rfind('\n').map_or(0, |i| i + 1);
        format!(
            "line {}:{}",
            line_of(self.sql, position),
            position - line_start + first_column
        )
    }

    /// An error found preparing the statement, at the current token (whose
    /// column ksqlDB counts from 2 in these messages).
    fn prepare_error(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow!("Failed to prepare statement: {}: {error}", self.location(2))
    }

    /// A parse error as ksqlDB words them: `line L:C: Syntax Error` and the detail.
    fn syntax_error(&self, detail: &str) -> anyhow::Error {
        anyhow!("{}: Syntax Error\n{detail}", self.location(1))
    }

    fn eat(&mut self, keyword: &str) -> bool {
        let found = self.peek_is(keyword);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, keyword: &str) -> Result<()> {
        if self.eat(keyword) {
            Ok(())
        } else {
            Err(self.expected(keyword))
        }
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol);
        self.at += usize::from(found);
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<()> {
        if self.eat_symbol(symbol) {
            return Ok(());
        }
        let found = self.peek().map_or_else(|| "the end".to_string(), describe);
        Err(self.syntax_error(&format!("missing '{symbol}' at {found}")))
    }

    fn identifier(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::Word { text, .. }) => {
                let text = text.clone();
                self.at += 1;
                Ok(text)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn statement(&mut self) -> Result<Statement> {
        if self.peek_is("SELECT") {
            return Ok(Statement::Query(self.select()?));
        }
        if self.eat("SET") {
            let name = self.text("a property name in quotes")?;
            self.expect_symbol("=")?;
            let value = self.text("a property value in quotes")?;
            return Ok(Statement::Set { name, value });
        }
        if self.eat("UNSET") {
            let name = self.text("a property name in quotes")?;
            return Ok(Statement::Unset { name });
        }
        if self.eat("SHOW") || self.eat("LIST") {
            let listing = match self
                .identifier("STREAMS, TABLES, TOPICS, QUERIES or PROPERTIES")?
                .as_str()
            {
                "STREAMS" => Listing::Streams,
                "TABLES" => Listing::Tables,
                "TOPICS" => Listing::Topics,
                "QUERIES" => Listing::Queries,
                "PROPERTIES" => Listing::Properties,
                _ => {
                    self.at -= 1;
                    return Err(self.expected("STREAMS, TABLES, TOPICS, QUERIES or PROPERTIES"));
                }
            };
            self.eat("EXTENDED");
            return Ok(Statement::Show(listing));
        }
        if self.eat("DESCRIBE") {
            let extended = self.eat("EXTENDED");
            let name = self.identifier("a stream or table name")?;
            return Ok(Statement::Describe { name, extended });
        }
        if self.eat("DROP") {
            let kind = self.source_kind()?;
            let if_exists = self.eat("IF");
            if if_exists {
                self.expect("EXISTS")?;
            }
            let name = self.identifier("a name")?;
            let delete_topic = self.eat("DELETE");
            if delete_topic {
                self.expect("TOPIC")?;
            }
            return Ok(Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            });
        }
        if self.eat("TERMINATE") {
            if self.eat("ALL") {
                return Ok(Statement::Terminate { query: None });
            }
            let query = self.identifier("a query id or ALL")?;
            return Ok(Statement::Terminate { query: Some(query) });
        }
        if self.eat("INSERT") {
            self.expect("INTO")?;
            let target = self.identifier("a stream name")?;
            if self.peek_is("VALUES") || self.peek() == Some(&Token::Symbol("(")) {
                return self.insert_values(target);
            }
            return Ok(Statement::InsertInto {
                target,
                select: self.select()?,
            });
        }
        if self.eat("ALTER") {
            return self.alter();
        }
        if !self.peek_is("CREATE") {
            return Err(self.expected(
                "a statement (CREATE, INSERT, SELECT, SET, SHOW, DESCRIBE, DROP, TERMINATE)",
            ));
        }
        self.expect("CREATE")?;
        let or_replace = self.eat("OR");
        if or_replace {
            self.expect("REPLACE")?;
        }
        let read_only = self.eat("SOURCE");
        let kind = self.source_kind()?;
        let name = self.identifier("a name")?;
        if self.eat_symbol("(") {
            let columns = self.columns()?;
            let properties = self.properties()?;
            return Ok(Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
                or_replace,
                read_only,
            });
        }
        let properties = self.properties()?;
        if !self.peek_is("AS") {
            // No columns and no query: the topic's registered schemas give the columns.
            return Ok(Statement::CreateSource {
                kind,
                name,
                columns: Vec::new(),
                properties,
                or_replace,
                read_only,
            });
        }
        if or_replace || read_only {
            bail!("CREATE OR REPLACE and CREATE SOURCE take a column list");
        }
        self.expect("AS")?;
        let select = self.select()?;
        Ok(Statement::CreateAs {
            kind,
            name,
            properties,
            select,
        })
    }

    /// `[(columns)] VALUES (values)` after `INSERT INTO target`.
    fn insert_values(&mut self, target: String) -> Result<Statement> {
        let columns = if self.eat_symbol("(") {
            let mut names = vec![self.identifier("a column name")?];
            while self.eat_symbol(",") {
                names.push(self.identifier("a column name")?);
            }
            self.expect_symbol(")")?;
            Some(names)
        } else {
            None
        };
        self.expect("VALUES")?;
        self.expect_symbol("(")?;
        let mut values = vec![self.expr()?];
        while self.eat_symbol(",") {
            values.push(self.expr()?);
        }
        self.expect_symbol(")")?;
        Ok(Statement::InsertValues {
            target,
            columns,
            values,
        })
    }

    /// `STREAM|TABLE name ADD [COLUMN] name type, ...` after `ALTER`.
    fn alter(&mut self) -> Result<Statement> {
        let kind = self.source_kind()?;
        let name = self.identifier("a name")?;
        let mut columns = Vec::new();
        loop {
            self.expect("ADD")?;
            self.eat("COLUMN");
            let column = self.identifier("a column name")?;
            columns.push(ColumnDef {
                name: column,
                ty: self.sql_type()?,
                key: false,
            });
            if !self.eat_symbol(",") {
                return Ok(Statement::Alter {
                    kind,
                    name,
                    columns,
                });
            }
        }
    }

    fn source_kind(&mut self) -> Result<SourceKind> {
        if self.eat("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.eat("TABLE") {
            Ok(SourceKind::Table)
        } else {
            Err(self.expected("STREAM or TABLE"))
        }
    }

    /// A quoted string, as SET's property names and values are written.
    fn text(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::Text(text)) => {
                let text = text.clone();
                self.at += 1;
                Ok(text)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn columns(&mut self) -> Result<Vec<ColumnDef>> {
        let mut columns = Vec::new();
        loop {
            let name = self.identifier("a column name")?;
            let ty = self.sql_type()?;
            let key = if self.eat("PRIMARY") {
                self.expect("KEY")?;
                true
            } else {
                self.eat("KEY")
            };
            columns.push(ColumnDef { name, ty, key });
            if self.eat_symbol(")") {
                return Ok(columns);
            }
            self.expect_symbol(",")?;
        }
    }

    fn sql_type(&mut self) -> Result<SqlType> {
        let name = self.identifier("a type")?;
        Ok(match name.as_str() {
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" => SqlType::BigInt,
            "DOUBLE" => SqlType::Double,
            "STRING" | "VARCHAR" => SqlType::String,
            "BOOLEAN" => SqlType::Boolean,
            "BYTES" => SqlType::Bytes,
            "TIMESTAMP" => SqlType::Timestamp,
            "DATE" => SqlType::Date,
            "TIME" => SqlType::Time,
            "DECIMAL" => {
                self.expect_symbol("(")?;
                let precision = self.whole_number()?;
                self.expect_symbol(",")?;
                let scale = self.whole_number()?;
                self.expect_symbol(")")?;
                if precision == 0 || scale > precision {
                    bail!("DECIMAL precision must be >= 1 and scale must be <= precision: DECIMAL({precision}, {scale})");
                }
                SqlType::Decimal { precision, scale }
            }
            "ARRAY" => {
                self.expect_symbol("<")?;
                let element = self.sql_type()?;
                self.expect_symbol(">")?;
                SqlType::Array(Box::new(element))
            }
            "MAP" => {
                self.expect_symbol("<")?;
                let key = self.sql_type()?;
                self.expect_symbol(",")?;
                let value = self.sql_type()?;
                self.expect_symbol(">")?;
                SqlType::Map(Box::new(key), Box::new(value))
            }
            "STRUCT" => {
                self.expect_symbol("<")?;
                let mut fields = Vec::new();
                if !self.eat_symbol(">") {
                    loop {
                        let name = self.identifier("a field name")?;
                        fields.push((name, self.sql_type()?));
                        if self.eat_symbol(">") {
                            break;
                        }
                        self.expect_symbol(",")?;
                    }
                }
                SqlType::Struct(fields)
            }
            _ => {
                self.at -= 1;
                return Err(self.expected("a type"));
            }
        })
    }

    fn whole_number(&mut self) -> Result<u32> {
        match self.peek() {
            Some(Token::Number(n)) => {
                let n = n
                    .parse()
                    .map_err(|_| anyhow!("{n} is not a whole number"))?;
                self.at += 1;
                Ok(n)
            }
            _ => Err(self.expected("a whole number")),
        }
    }

    fn properties(&mut self) -> Result<Properties> {
        let mut properties = Vec::new();
        if !self.eat("WITH") {
            return Ok(properties);
        }
        self.expect_symbol("(")?;
        loop {
            let name = self.identifier("a property name")?.to_ascii_uppercase();
            self.expect_symbol("=")?;
            let value = match self.primary()? {
                Expr::Literal(v) => v,
                _ => return Err(self.expected("a literal value")),
            };
            properties.push((name, value));
            if self.eat_symbol(")") {
                return Ok(properties);
            }
            self.expect_symbol(",")?;
        }
    }

    fn select(&mut self) -> Result<Select> {
        self.expect("SELECT")?;
        let mut items = Vec::new();
        loop {
            let qualified_star = matches!(
                (self.tokens.get(self.at + 1), self.tokens.get(self.at + 2)),
                (Some((Token::Symbol("."), _)), Some((Token::Symbol("*"), _)))
            );
            if self.eat_symbol("*") {
                items.push(SelectItem::All);
            } else if qualified_star {
                let source = self.identifier("a source name")?;
                self.at += 2;
                items.push(SelectItem::AllOf(source));
            } else {
                let expr = self.expr()?;
                // `expr AS name`, or just `expr name`.
                let implicit = matches!(self.peek(), Some(Token::Word { text, quoted }) if *quoted || text != "FROM");
                let alias = if self.eat("AS") || implicit {
                    Some(self.identifier("an alias")?)
                } else {
                    None
                };
                items.push(SelectItem::Expr { expr, alias });
            }
            if !self.eat_symbol(",") {
                break;
            }
        }
        self.expect("FROM")?;
        let from = self.identifier("a source name")?;
        let from_alias = self.source_alias()?;
        let mut joins = Vec::new();
        loop {
            let kind = if self.eat("JOIN") {
                JoinKind::Inner
            } else {
                let kind = if self.eat("INNER") {
                    JoinKind::Inner
                } else if self.eat("LEFT") {
                    JoinKind::Left
                } else if self.eat("RIGHT") {
                    JoinKind::Right
                } else if self.eat("FULL") {
                    JoinKind::Full
                } else {
                    break;
                };
                self.eat("OUTER");
                self.expect("JOIN")?;
                kind
            };
            let source = self.identifier("a source name")?;
            let alias = self.source_alias()?;
            let within = if self.eat("WITHIN") {
                Some(self.within()?)
            } else {
                None
            };
            self.expect("ON")?;
            joins.push(Join {
                kind,
                source,
                alias,
                within,
                on: self.expr()?,
            });
        }
        let (mut window, explicit_grace) = if self.eat("WINDOW") {
            let (window, explicit_grace) = self.window()?;
            (Some(window), explicit_grace)
        } else {
            (None, false)
        };
        let filter = if self.eat("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat("GROUP") {
            self.expect("BY")?;
            // `GROUP BY a, b` or one grouping set `GROUP BY (a, b)`; no boolean operators.
            let at = self.at;
            let set = self.eat_symbol("(") && {
                let first = self.additive()?;
                group_by.push(first);
                self.peek() == Some(&Token::Symbol(","))
            };
            if set {
                while self.eat_symbol(",") {
                    group_by.push(self.additive()?);
                }
                self.expect_symbol(")")?;
            } else {
                self.at = at;
                group_by.clear();
                group_by.push(self.additive()?);
                while self.eat_symbol(",") {
                    group_by.push(self.additive()?);
                }
            }
        }
        let mut partition_by = Vec::new();
        if self.eat("PARTITION") {
            self.expect("BY")?;
            partition_by.push(self.expr()?);
            while self.eat_symbol(",") {
                partition_by.push(self.expr()?);
            }
        }
        let having = if self.eat("HAVING") {
            Some(self.expr()?)
        } else {
            None
        };
        let emit = if !self.eat("EMIT") {
            None
        } else if self.eat("CHANGES") {
            Some(EmitMode::Changes)
        } else if self.eat("FINAL") {
            Some(EmitMode::Final)
        } else {
            return Err(self.expected("CHANGES or FINAL"));
        };
        if emit == Some(EmitMode::Final) {
            match window.as_mut() {
                // A final row waits for its window to close; without a GRACE
                // PERIOD it closes at its end, as seed 03's session shows (a row
                // per 10-second window, not a day later).
                Some(w) if !explicit_grace => w.grace = 0,
                Some(_) => {}
                None => bail!("EMIT FINAL is only supported for windowed aggregations."),
            }
        }
        let limit = if self.eat("LIMIT") {
            match self.peek() {
                Some(Token::Number(n)) => {
                    let limit = n
                        .parse()
                        .map_err(|_| {
                            anyhow!("Failed to prepare statement: Value must be integer for command: LIMIT")
                        })?;
                    self.at += 1;
                    Some(limit)
                }
                Some(Token::Symbol("-")) => bail!(
                    "Pull queries don't support negative integers in the LIMIT clause. See https://cnfl.io/queries for more info."
                ),
                _ => return Err(self.expected("a row count after LIMIT")),
            }
        } else {
            None
        };
        Ok(Select {
            items,
            from,
            window,
            filter,
            group_by,
            having,
            emit,
            limit,
            partition_by,
            from_alias,
            joins,
        })
    }

    /// A source's alias: `input i` or `input AS i`.
    fn source_alias(&mut self) -> Result<Option<String>> {
        if self.eat("AS") {
            return self.identifier("an alias").map(Some);
        }
        match self.peek() {
            Some(Token::Word { text, quoted }) if *quoted || !CLAUSES.contains(&text.as_str()) => {
                let alias = text.clone();
                self.at += 1;
                Ok(Some(alias))
            }
            _ => Ok(None),
        }
    }

    /// `WITHIN n UNIT` or `WITHIN (before, after)`, with an optional grace
    /// period (which an in-order engine has no use for).
    fn within(&mut self) -> Result<(i64, i64)> {
        let bounds = if self.eat_symbol("(") {
            let before = self.duration()?;
            self.expect_symbol(",")?;
            let after = self.duration()?;
            self.expect_symbol(")")?;
            (before, after)
        } else {
            let both = self.duration()?;
            (both, both)
        };
        if self.eat("GRACE") {
            self.expect("PERIOD")?;
            self.duration()?;
        }
        Ok(bounds)
    }

    /// The window, and whether its GRACE PERIOD was written.
    fn window(&mut self) -> Result<(Window, bool)> {
        // An optional window name: `WINDOW w TUMBLING (..)`.
        let named = matches!(self.tokens.get(self.at + 1), Some((t, _)) if ["TUMBLING", "HOPPING", "SESSION"].iter().any(|k| t.is(k)));
        if named && matches!(self.peek(), Some(Token::Word { .. })) {
            self.at += 1;
        }
        let session = self.eat("SESSION");
        let hopping = if session || self.eat("TUMBLING") {
            false
        } else if self.eat("HOPPING") {
            true
        } else {
            return Err(self.expected("TUMBLING, HOPPING or SESSION"));
        };
        self.expect_symbol("(")?;
        if !session {
            self.expect("SIZE")?;
        }
        let size = self.duration()?;
        let mut window = Window {
            size,
            advance: size,
            grace: 24 * 3600 * 1000,
            session,
        };
        if hopping {
            self.expect_symbol(",")?;
            self.expect("ADVANCE")?;
            self.expect("BY")?;
            window.advance = self.duration()?;
        }
        let mut explicit_grace = false;
        while self.eat_symbol(",") {
            if self.eat("GRACE") {
                self.expect("PERIOD")?;
                window.grace = self.duration()?;
                explicit_grace = true;
            } else if self.eat("RETENTION") {
                self.duration()?;
            } else {
                return Err(self.expected("GRACE PERIOD or RETENTION"));
            }
        }
        self.expect_symbol(")")?;
        if window.size <= 0 || window.advance <= 0 || window.advance > window.size {
            bail!("a window needs a positive size and an advance no larger than it");
        }
        Ok((window, explicit_grace))
    }

    /// `30 SECONDS` and the like, in milliseconds.
    fn duration(&mut self) -> Result<i64> {
        let amount: i64 = match self.peek() {
            Some(Token::Number(n)) => n
                .parse()
                .map_err(|_| anyhow!("{n} is not a whole number"))?,
            _ => return Err(self.expected("a duration")),
        };
        self.at += 1;
        let unit = self.identifier("a time unit")?;
        let millis = match unit.trim_end_matches('S') {
            "MILLISECOND" => 1,
            "SECOND" => 1000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => bail!("Unknown time unit: '{unit}'"),
        };
        Ok(amount * millis)
    }

    fn expr(&mut self) -> Result<Expr> {
        let mut left = self.and()?;
        while self.eat("OR") {
            left = Expr::Binary(BinaryOp::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.not()?;
        while self.eat("AND") {
            left = Expr::Binary(BinaryOp::And, Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr> {
        if self.eat("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr> {
        let left = self.additive()?;
        let op = match self.peek() {
            Some(Token::Symbol("=")) => Some(BinaryOp::Eq),
            Some(Token::Symbol("<>" | "!=")) => Some(BinaryOp::NotEq),
            Some(Token::Symbol("<")) => Some(BinaryOp::Lt),
            Some(Token::Symbol("<=")) => Some(BinaryOp::LtEq),
            Some(Token::Symbol(">")) => Some(BinaryOp::Gt),
            Some(Token::Symbol(">=")) => Some(BinaryOp::GtEq),
            _ => None,
        };
        if let Some(op) = op {
            self.at += 1;
            return Ok(Expr::Binary(op, Box::new(left), Box::new(self.additive()?)));
        }
        if self.eat("IS") {
            let negated = self.eat("NOT");
            if self.eat("DISTINCT") {
                self.expect("FROM")?;
                return Ok(Expr::DistinctFrom {
                    left: Box::new(left),
                    right: Box::new(self.additive()?),
                    negated,
                });
            }
            self.expect("NULL")?;
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let negated = self.eat("NOT");
        if self.eat("BETWEEN") {
            let low = self.additive()?;
            self.expect("AND")?;
            let high = self.additive()?;
            return Ok(Expr::Between {
                expr: Box::new(left),
                low: Box::new(low),
                high: Box::new(high),
                negated,
            });
        }
        if self.eat("IN") {
            self.expect_symbol("(")?;
            let mut list = vec![self.expr()?];
            while self.eat_symbol(",") {
                list.push(self.expr()?);
            }
            self.expect_symbol(")")?;
            return Ok(Expr::In {
                expr: Box::new(left),
                list,
                negated,
            });
        }
        if self.eat("LIKE") {
            let pattern = Box::new(self.additive()?);
            let escape = if self.eat("ESCAPE") {
                match self.peek().cloned() {
                    Some(Token::Text(text)) if text.chars().count() == 1 => {
                        self.at += 1;
                        text.chars().next()
                    }
                    _ => return Err(self.expected("one character in quotes after ESCAPE")),
                }
            } else {
                None
            };
            return Ok(Expr::Like {
                expr: Box::new(left),
                pattern,
                negated,
                escape,
            });
        }
        if negated {
            return Err(self.expected("BETWEEN, IN or LIKE after NOT"));
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Token::Symbol("+")) => BinaryOp::Add,
                Some(Token::Symbol("-")) => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Symbol("*")) => BinaryOp::Mul,
                Some(Token::Symbol("/")) => BinaryOp::Div,
                Some(Token::Symbol("%")) => BinaryOp::Rem,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.eat_symbol("-") {
            // `-9223372036854775808` is a literal, not the negation of one too large.
            if let Some(Token::Number(n)) = self.peek().cloned() {
                let literal = number(&format!("-{n}")).map_err(|e| self.prepare_error(e))?;
                self.at += 1;
                return Ok(Expr::Literal(literal));
            }
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        self.postfix()
    }

    /// A primary expression followed by any `[index]` and `->field`.
    fn postfix(&mut self) -> Result<Expr> {
        let mut expr = self.primary()?;
        loop {
            if self.eat_symbol("[") {
                let index = self.expr()?;
                self.expect_symbol("]")?;
                expr = Expr::Subscript {
                    base: Box::new(expr),
                    index: Box::new(index),
                };
            } else if self.eat_symbol("->") {
                expr = Expr::Field {
                    base: Box::new(expr),
                    field: self.identifier("a field name")?,
                };
            } else {
                return Ok(expr);
            }
        }
    }

    /// `expr`, or a lambda `x => expr` / `(x, y) => expr` where a function takes one.
    fn argument(&mut self) -> Result<Expr> {
        let word = |t: Option<&(Token, usize)>| matches!(t, Some((Token::Word { .. }, _)));
        let symbol = |t: Option<&(Token, usize)>, s: &str| matches!(t, Some((Token::Symbol(x), _)) if *x == s);
        let at = self.at;
        let single = word(self.tokens.get(at)) && symbol(self.tokens.get(at + 1), "=>");
        let mut params = Vec::new();
        if single {
            params.push(self.identifier("a lambda parameter")?);
        } else if symbol(self.tokens.get(at), "(") && word(self.tokens.get(at + 1)) {
            self.at += 1;
            loop {
                params.push(self.identifier("a lambda parameter")?);
                if !self.eat_symbol(",") {
                    break;
                }
            }
            if !(self.eat_symbol(")") && self.peek() == Some(&Token::Symbol("=>"))) {
                self.at = at;
                params.clear();
            }
        }
        if params.is_empty() {
            return self.expr();
        }
        self.expect_symbol("=>")?;
        Ok(Expr::Lambda {
            params,
            body: Box::new(self.expr()?),
        })
    }

    /// `name := expr, ...)` of MAP and STRUCT constructors, after the `(`.
    fn assignments<K>(
        &mut self,
        mut key: impl FnMut(&mut Self) -> Result<K>,
    ) -> Result<Vec<(K, Expr)>> {
        let mut entries = Vec::new();
        if self.eat_symbol(")") {
            return Ok(entries);
        }
        loop {
            let k = key(self)?;
            self.expect_symbol(":=")?;
            entries.push((k, self.expr()?));
            if self.eat_symbol(")") {
                return Ok(entries);
            }
            self.expect_symbol(",")?;
        }
    }

    fn primary(&mut self) -> Result<Expr> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.expected("an expression"));
        };
        self.at += 1;
        Ok(match token {
            Token::Number(n) => {
                self.at -= 1;
                let literal = number(&n).map_err(|e| self.prepare_error(e))?;
                self.at += 1;
                Expr::Literal(literal)
            }
            Token::Text(s) => Expr::Literal(Value::String(s)),
            Token::Symbol("(") => {
                let inner = self.expr()?;
                self.expect_symbol(")")?;
                inner
            }
            ref t if t.is("NULL") => Expr::Literal(Value::Null),
            ref t if t.is("CASE") => {
                let operand = if self.peek_is("WHEN") {
                    None
                } else {
                    Some(Box::new(self.expr()?))
                };
                let mut branches = Vec::new();
                while self.eat("WHEN") {
                    let when = self.expr()?;
                    self.expect("THEN")?;
                    branches.push((when, self.expr()?));
                }
                if branches.is_empty() {
                    return Err(self.expected("WHEN"));
                }
                let otherwise = if self.eat("ELSE") {
                    Some(Box::new(self.expr()?))
                } else {
                    None
                };
                self.expect("END")?;
                Expr::Case {
                    operand,
                    branches,
                    otherwise,
                }
            }
            ref t if t.is("CAST") && self.peek() == Some(&Token::Symbol("(")) => {
                self.expect_symbol("(")?;
                let expr = self.expr()?;
                self.expect("AS")?;
                let ty = self.sql_type()?;
                self.expect_symbol(")")?;
                Expr::Cast {
                    expr: Box::new(expr),
                    ty,
                }
            }
            ref t if t.is("ARRAY") && self.eat_symbol("[") => {
                let mut elements = Vec::new();
                if !self.eat_symbol("]") {
                    loop {
                        elements.push(self.expr()?);
                        if self.eat_symbol("]") {
                            break;
                        }
                        self.expect_symbol(",")?;
                    }
                }
                Expr::Array(elements)
            }
            ref t if t.is("MAP") && self.eat_symbol("(") => {
                Expr::Map(self.assignments(|p| p.expr())?)
            }
            ref t if t.is("STRUCT") && self.eat_symbol("(") => {
                Expr::Struct(self.assignments(|p| p.identifier("a field name"))?)
            }
            ref t if t.is("TRUE") => Expr::Literal(Value::Bool(true)),
            ref t if t.is("FALSE") => Expr::Literal(Value::Bool(false)),
            Token::Word {
                ref text,
                quoted: false,
            } if RESERVED.contains(&text.as_str()) => {
                self.at -= 1;
                return Err(self.expected("an expression"));
            }
            Token::Word { text, .. } => {
                if self.eat_symbol(".") {
                    return Ok(Expr::Qualified {
                        source: text,
                        column: self.identifier("a column name")?,
                    });
                }
                if !self.eat_symbol("(") {
                    return Ok(Expr::Column(text));
                }
                let mut args = Vec::new();
                let star = self.eat_symbol("*");
                if !star && !self.eat_symbol(")") {
                    args.push(self.argument()?);
                    while self.eat_symbol(",") {
                        args.push(self.argument()?);
                    }
                } else if !star {
                    return Ok(Expr::Function {
                        name: text,
                        args,
                        star,
                    });
                }
                self.expect_symbol(")")?;
                Expr::Function {
                    name: text,
                    args,
                    star,
                }
            }
            Token::Symbol(_) => {
                self.at -= 1;
                return Err(self.expected("an expression"));
            }
        })
    }
}

/// Words that start the clause after FROM (so they are no alias).
const CLAUSES: [&str; 14] = [
    "RIGHT",
    "WITHIN",
    "WHERE",
    "GROUP",
    "HAVING",
    "WINDOW",
    "EMIT",
    "PARTITION",
    "JOIN",
    "LEFT",
    "INNER",
    "FULL",
    "LIMIT",
    "ON",
];

/// Words that end an expression rather than name a column.
const RESERVED: [&str; 17] = [
    "FROM", "WHERE", "SELECT", "GROUP", "HAVING", "WINDOW", "EMIT", "AS", "AND", "OR", "BY",
    "WHEN", "THEN", "ELSE", "END", "LIKE", "LIMIT",
];

/// A numeric literal's value: a BIGINT when it is whole, else a DOUBLE;
/// what does not fit is refused in ksqlDB's words.
fn number(text: &str) -> Result<Value> {
    let whole = !text.contains(['.', 'e', 'E']);
    if whole {
        return text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| anyhow!("Invalid numeric literal: {text}"));
    }
    let f: f64 = text
        .parse()
        .map_err(|_| anyhow!("Invalid numeric literal: {text}"))?;
    serde_json::Number::from_f64(f)
        .filter(|_| f.is_finite())
        .map(Value::Number)
        .ok_or_else(|| anyhow!("Number overflows DOUBLE: {text}"))
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word { text, .. } => format!("'{text}'"),
        Token::Number(n) => n.clone(),
        Token::Text(s) => format!("'{s}'"),
        Token::Symbol(s) => format!("'{s}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_back_as_they_are_written() {
        for text in [
            "BIGINT",
            "TIMESTAMP",
            "DECIMAL(4, 2)",
            "ARRAY<STRING>",
            "MAP<STRING, INTEGER>",
            "STRUCT<`A` INTEGER, `B` ARRAY<DOUBLE>>",
        ] {
            assert_eq!(parse_type(text).unwrap().to_string(), text);
        }
        assert!(parse_type("BIGINT KEY").is_err());
    }

    #[test]
    fn each_statement_comes_with_its_text() {
        let texts: Vec<String> =
            parse_with_text("SELECT * FROM A;\n  SELECT 'x;y' AS X FROM B ;SHOW TABLES")
                .unwrap()
                .into_iter()
                .map(|(_, text)| text)
                .collect();
        assert_eq!(
            texts,
            [
                "SELECT * FROM A;",
                "SELECT 'x;y' AS X FROM B ;",
                "SHOW TABLES"
            ]
        );
    }

    #[test]
    fn create_stream_and_csas() {
        let statements = parse(
            "CREATE STREAM INPUT (id int KEY, name STRING) WITH (kafka_topic='test_topic', value_format='JSON');
             CREATE STREAM OUTPUT AS SELECT *, id + 1 AS next FROM INPUT WHERE id < 10 AND name IS NOT NULL;",
        )
        .unwrap();
        let Statement::CreateSource {
            columns,
            properties,
            ..
        } = &statements[0]
        else {
            panic!()
        };
        assert_eq!(
            columns[0],
            ColumnDef {
                name: "ID".into(),
                ty: SqlType::Int,
                key: true
            }
        );
        assert_eq!(
            properties[0],
            ("KAFKA_TOPIC".into(), Value::from("test_topic"))
        );
        let Statement::CreateAs { select, .. } = &statements[1] else {
            panic!()
        };
        assert_eq!(select.items.len(), 2);
        assert!(matches!(
            select.filter,
            Some(Expr::Binary(BinaryOp::And, _, _))
        ));
    }

    #[test]
    fn source_aliases_and_qualified_columns() {
        let statements =
            parse("CREATE STREAM S AS SELECT i.x AS y FROM input i WHERE i.x > 1;").unwrap();
        let Statement::CreateAs { select, .. } = &statements[0] else {
            panic!()
        };
        assert_eq!(select.from, "INPUT");
        assert_eq!(select.from_alias.as_deref(), Some("I"));
        assert_eq!(
            select.items[0],
            SelectItem::Expr {
                expr: Expr::Qualified {
                    source: "I".into(),
                    column: "X".into()
                },
                alias: Some("Y".into())
            }
        );
        let statements = parse(
            "CREATE STREAM J AS SELECT * FROM a LEFT OUTER JOIN b AS x WITHIN (1 SECOND, 2 SECONDS) ON a.k = x.k JOIN c ON a.k = c.k;",
        )
        .unwrap();
        let Statement::CreateAs { select, .. } = &statements[0] else {
            panic!()
        };
        assert_eq!(select.joins.len(), 2);
        assert_eq!(
            (
                select.joins[0].kind,
                select.joins[0].alias.as_deref(),
                select.joins[0].within
            ),
            (JoinKind::Left, Some("X"), Some((1000, 2000)))
        );
        assert_eq!(select.joins[1].kind, JoinKind::Inner);
        let statements = parse("CREATE STREAM S AS SELECT i.* FROM input i;").unwrap();
        let Statement::CreateAs { select, .. } = &statements[0] else {
            panic!()
        };
        assert_eq!(select.items, [SelectItem::AllOf("I".into())]);
        let statements = parse(
            "CREATE TABLE T AS SELECT COUNT(*) FROM s WINDOW w SESSION (1 SECOND) GROUP BY k;",
        )
        .unwrap();
        let Statement::CreateAs { select, .. } = &statements[0] else {
            panic!()
        };
        assert!(select.window.is_some_and(|w| w.session), "a named window");
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let error = parse("CREATE STREAM S AS\nSELECT FROM t;")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "line 2:8: Syntax Error\nexpected an expression, found 'FROM'"
        );
    }

    #[test]
    fn numeric_literals_that_do_not_fit_are_refused() {
        let error = |sql: &str| parse(sql).unwrap_err().to_string();
        assert_eq!(
            error("CREATE STREAM S AS SELECT 9223372036854775808 FROM T;"),
            "Failed to prepare statement: line 1:28: Invalid numeric literal: 9223372036854775808"
        );
        assert!(error("CREATE STREAM S AS SELECT 1e999 FROM T;")
            .ends_with("Number overflows DOUBLE: 1e999"));
        let smallest = parse("CREATE STREAM S AS SELECT -9223372036854775808 FROM T;").unwrap();
        let Statement::CreateAs { select, .. } = &smallest[0] else {
            panic!()
        };
        assert_eq!(
            select.items[0],
            SelectItem::Expr {
                expr: Expr::Literal(Value::from(i64::MIN)),
                alias: None
            }
        );
    }
}
