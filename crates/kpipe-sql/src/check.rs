//! Type checks of a query's expressions before it runs, with ksqlDB's
//! messages: comparisons of incomparable types, IN lists whose items cannot
//! be the tested value's type, and WHERE/HAVING clauses that are not boolean.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::parser::{BinaryOp, ColumnDef, Expr, SqlType};
use crate::plan::children;
use crate::types::{parse_boolean, type_of};

/// Checks a WHERE or HAVING condition (`clause` names it in messages).
pub(crate) fn check_condition(clause: &str, condition: &Expr, columns: &[ColumnDef]) -> Result<()> {
    check_comparisons(clause, condition, columns)?;
    check_in_lists(condition, columns)?;
    let ty = type_of(condition, columns)?;
    if ty != SqlType::Boolean && !matches!(condition, Expr::Literal(Value::Null)) {
        bail!("Type error in {clause} expression: Should evaluate to boolean but is {condition} ({ty}) instead.");
    }
    Ok(())
}

/// Checks a selected expression: its IN lists and CASTs, and no comparison
/// of two nulls.
pub(crate) fn check_selected(expr: &Expr, columns: &[ColumnDef]) -> Result<()> {
    check_null_comparisons(expr)?;
    check_casts(expr, columns)?;
    check_in_lists(expr, columns)
}

/// Refuses CASTs between a collection or struct and another kind of type
/// (any type may become a STRING).
fn check_casts(expr: &Expr, columns: &[ColumnDef]) -> Result<()> {
    if let Expr::Cast { expr: inner, ty } = expr {
        let from = type_of(inner, columns)?;
        let same_kind = std::mem::discriminant(&from) == std::mem::discriminant(ty);
        let convertible = (from.is_primitive() && ty.is_primitive())
            || *ty == SqlType::String
            || same_kind
            || matches!(**inner, Expr::Literal(Value::Null));
        if !convertible {
            bail!("Invalid Select: Cast of {from} to {ty} is not supported");
        }
    }
    if matches!(expr, Expr::Lambda { .. }) {
        return Ok(());
    }
    children(expr)
        .into_iter()
        .try_for_each(|child| check_casts(child, columns))
}

fn check_null_comparisons(expr: &Expr) -> Result<()> {
    if let Expr::Binary(op, left, right) = expr {
        let null = |e: &Expr| matches!(e, Expr::Literal(Value::Null));
        if comparison_name(*op).is_some() && null(left) && null(right) {
            let symbol = Expr::Binary(*op, left.clone(), right.clone()).to_string();
            bail!(
                "Comparison with NULL not supported: {}",
                symbol.trim_matches(['(', ')']).replace("null", "NULL")
            );
        }
    }
    children(expr)
        .into_iter()
        .try_for_each(check_null_comparisons)
}

/// Checks the IN lists of an expression.
fn check_in_lists(expr: &Expr, columns: &[ColumnDef]) -> Result<()> {
    if let Expr::In {
        expr: tested, list, ..
    } = expr
    {
        let ty = type_of(tested, columns)?;
        for item in list {
            check_in_item(&ty, item, columns)?;
        }
    }
    if matches!(expr, Expr::Lambda { .. }) {
        return Ok(());
    }
    children(expr)
        .into_iter()
        .try_for_each(|child| check_in_lists(child, columns))
}

/// Whether `item` can stand for a value of `ty` in an IN list: a literal
/// that reads as one, a constructor whose parts can, or an expression of a
/// comparable type.
fn check_in_item(ty: &SqlType, item: &Expr, columns: &[ColumnDef]) -> Result<()> {
    match (ty, item) {
        (_, Expr::Literal(Value::Null)) => Ok(()),
        (SqlType::String, Expr::Literal(_)) => Ok(()),
        (_, Expr::Literal(Value::String(text))) if ty.is_primitive() => {
            if reads_as(ty, text) {
                Ok(())
            } else {
                bail!(
                    "Invalid Predicate: invalid input syntax for type {}: \"{text}\".",
                    family(ty)
                )
            }
        }
        (SqlType::Array(element), Expr::Array(items)) => items
            .iter()
            .try_for_each(|i| check_constructor_part(ty, element, i, item, columns)),
        (SqlType::Map(_, value), Expr::Map(entries)) => entries
            .iter()
            .try_for_each(|(_, v)| check_constructor_part(ty, value, v, item, columns)),
        (SqlType::Struct(fields), Expr::Struct(values)) => {
            values
                .iter()
                .try_for_each(|(name, v)| match fields.iter().find(|(f, _)| f == name) {
                    Some((_, field_ty)) => check_constructor_part(ty, field_ty, v, item, columns),
                    None => Ok(()),
                })
        }
        _ => {
            let item_ty = type_of(item, columns)?;
            if comparable(ty, &item_ty) {
                Ok(())
            } else {
                bail!("Invalid Predicate: operator does not exist: {ty} = {item_ty} ({item})\nHint: You might need to add explicit type casts.")
            }
        }
    }
}

/// A part of an ARRAY, MAP or STRUCT constructor in an IN list of `whole`s.
fn check_constructor_part(
    whole: &SqlType,
    part_ty: &SqlType,
    part: &Expr,
    constructor: &Expr,
    columns: &[ColumnDef],
) -> Result<()> {
    if let Expr::Literal(_) = part {
        return check_in_item(part_ty, part, columns);
    }
    let ty = type_of(part, columns)?;
    if comparable(part_ty, &ty) {
        return Ok(());
    }
    let constructed = type_of(constructor, columns)?;
    bail!("Invalid Predicate: operator does not exist: {whole} = {constructed} ({constructor})\nHint: You might need to add explicit type casts.")
}

/// Whether `text` reads as a value of the primitive type `ty`.
fn reads_as(ty: &SqlType, text: &str) -> bool {
    let text = text.trim();
    match ty {
        SqlType::Boolean => parse_boolean(text).is_some(),
        SqlType::Int | SqlType::BigInt | SqlType::Double | SqlType::Decimal { .. } => {
            text.parse::<f64>().is_ok()
        }
        _ => true,
    }
}

/// A type's name without parameters, as ksqlDB names it in parse errors.
fn family(ty: &SqlType) -> String {
    match ty {
        SqlType::Decimal { .. } => "DECIMAL".into(),
        other => other.to_string(),
    }
}

/// Whether values of the two types can be compared.
pub(crate) fn comparable(a: &SqlType, b: &SqlType) -> bool {
    use SqlType as T;
    let numeric = |t: &SqlType| matches!(t, T::Int | T::BigInt | T::Double | T::Decimal { .. });
    let temporal = |t: &SqlType| matches!(t, T::Timestamp | T::Date | T::Time);
    match (a, b) {
        _ if numeric(a) && numeric(b) => true,
        (T::String, t) | (t, T::String) if temporal(t) => true,
        (T::Array(x), T::Array(y)) => comparable(x, y),
        (T::Map(k1, v1), T::Map(k2, v2)) => comparable(k1, k2) && comparable(v1, v2),
        (T::Struct(x), T::Struct(y)) => x.iter().all(|(name, tx)| {
            y.iter()
                .find(|(n, _)| n == name)
                .is_none_or(|(_, ty)| comparable(tx, ty))
        }),
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// Refuses comparisons of incomparable types in a WHERE or HAVING clause.
fn check_comparisons(clause: &str, expr: &Expr, columns: &[ColumnDef]) -> Result<()> {
    if let Expr::Binary(op, left, right) = expr {
        if let Some(name) = comparison_name(*op) {
            let (lt, rt) = (type_of(left, columns)?, type_of(right, columns)?);
            let null = |e: &Expr| matches!(e, Expr::Literal(Value::Null));
            // ksqlDB quotes the comparison after the reason.
            match (null(left), null(right)) {
                (false, false) if !comparable(&lt, &rt) => bail!(
                    "Error in {clause} expression: Cannot compare {left} ({lt}) to {right} ({rt}) with {name}.\nStatement: {expr}"
                ),
                (true, false) | (false, true) => {
                    let (l, r) = match null(left) {
                        true => ("NULL".to_string(), rt.to_string()),
                        false => (lt.to_string(), "NULL".to_string()),
                    };
                    bail!(
                        "Error in {clause} expression: Comparison with NULL not supported: {l} {} {r}\nUse 'IS NULL' or 'IS NOT NULL' instead.\nStatement: {expr}",
                        crate::plan::operator(*op)
                    )
                }
                _ => {}
            }
        }
    }
    if matches!(expr, Expr::Lambda { .. }) {
        return Ok(());
    }
    children(expr)
        .into_iter()
        .try_for_each(|child| check_comparisons(clause, child, columns))
}

fn comparison_name(op: BinaryOp) -> Option<&'static str> {
    use BinaryOp as B;
    Some(match op {
        B::Eq => "EQUAL",
        B::NotEq => "NOT_EQUAL",
        B::Lt => "LESS_THAN",
        B::LtEq => "LESS_THAN_OR_EQUAL",
        B::Gt => "GREATER_THAN",
        B::GtEq => "GREATER_THAN_OR_EQUAL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn condition(sql: &str) -> Expr {
        let statement =
            &parse(&format!("CREATE STREAM O AS SELECT * FROM I WHERE {sql};")).unwrap()[0];
        let crate::parser::Statement::CreateAs { select, .. } = statement else {
            panic!()
        };
        select.filter.clone().unwrap()
    }

    #[test]
    fn conditions_are_type_checked_in_ksqldbs_words() {
        let columns = vec![
            ColumnDef {
                name: "ID".into(),
                ty: SqlType::Int,
                key: false,
            },
            ColumnDef {
                name: "B".into(),
                ty: SqlType::Boolean,
                key: false,
            },
            ColumnDef {
                name: "A".into(),
                ty: SqlType::Array(Box::new(SqlType::BigInt)),
                key: false,
            },
        ];
        let error = |sql: &str| {
            check_condition("WHERE", &condition(sql), &columns)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("ID >= 'x'"),
            "Error in WHERE expression: Cannot compare ID (INTEGER) to 'x' (STRING) with GREATER_THAN_OR_EQUAL.\nStatement: (ID >= 'x')"
        );
        assert!(error("ID = NULL").starts_with(
            "Error in WHERE expression: Comparison with NULL not supported: INTEGER = NULL\nUse 'IS NULL'"
        ));
        assert!(error("B IN ('maybe')")
            .starts_with("Invalid Predicate: invalid input syntax for type BOOLEAN: \"maybe\"."));
        assert!(error("ID IN (true)")
            .starts_with("Invalid Predicate: operator does not exist: INTEGER = BOOLEAN (true)"));
        assert!(error("A IN (ARRAY[B])").starts_with(
            "Invalid Predicate: operator does not exist: ARRAY<BIGINT> = ARRAY<BOOLEAN> (ARRAY[B])"
        ));
        assert_eq!(
            error("'no'"),
            "Type error in WHERE expression: Should evaluate to boolean but is 'no' (STRING) instead."
        );
        assert_eq!(
            check_selected(&condition("NULL <> NULL"), &columns)
                .unwrap_err()
                .to_string(),
            "Comparison with NULL not supported: NULL <> NULL"
        );
        assert!(check_condition(
            "WHERE",
            &condition("ID IN (1, '2', 3.0) AND A IN (ARRAY['3', null])"),
            &columns
        )
        .is_ok());
    }
}
