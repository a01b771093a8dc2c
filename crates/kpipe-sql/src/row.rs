//! A row's columns by name: the values side by side, the names shared by
//! every row decoded into from one template. The reader thread decodes rows
//! that the query's thread then reads once each; with shared names a column
//! lookup touches names all rows use (warm in cache) and one short run of
//! values, where a hash map per row put its own keys and buckets behind
//! every lookup.

use std::sync::Arc;

use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    /// Column names, shared until one row adds or removes a column.
    names: Arc<Names>,
    values: Vec<Value>,
    /// Where the next [`Row::slot`] probably is: decoding sets one source's
    /// columns in the same order every time.
    cursor: usize,
}

impl Row {
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.names.position(name).map(|i| &self.values[i])
    }

    /// Sets a column, allocating its name only when the row lacks it.
    pub(crate) fn set(&mut self, name: &str, value: Value) {
        *self.slot(name) = value;
    }

    /// A column's value to overwrite in place (null when the row lacks it).
    pub(crate) fn slot(&mut self, name: &str) -> &mut Value {
        let at_cursor = self.names.0.get(self.cursor).is_some_and(|n| same(n, name));
        let i = if at_cursor {
            self.cursor
        } else {
            self.names.position(name).unwrap_or_else(|| {
                Arc::make_mut(&mut self.names).push(name);
                self.values.push(Value::Null);
                self.values.len() - 1
            })
        };
        self.cursor = i + 1;
        &mut self.values[i]
    }

    /// Sets a column; the value it replaces, if any.
    pub(crate) fn insert(&mut self, name: String, value: Value) -> Option<Value> {
        match self.names.position(&name) {
            Some(i) => Some(std::mem::replace(&mut self.values[i], value)),
            None => {
                self.set(&name, value);
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.names.position(name)?;
        Arc::make_mut(&mut self.names).0.remove(i);
        self.cursor = 0;
        Some(self.values.remove(i))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.names.0.iter().zip(&self.values)
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// Column names, each on cache lines of its own: rows of one source share
/// them across threads, and with a name on a line that an allocation the
/// reader thread writes also used, every lookup of the query's thread
/// missed the cache (bench/sql.sh spent a fifth of its CPU so). Names and
/// their list take whole multiples of 64 bytes, which mimalloc, the global
/// allocator, places on line boundaries; the list's header is aligned.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Names(Vec<String>);

impl Names {
    fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| same(n, name))
    }

    fn push(&mut self, name: &str) {
        if self.0.len() == self.0.capacity() {
            // 8 names of 24 bytes are 3 lines.
            self.0.reserve_exact(8);
        }
        let mut padded = String::with_capacity(name.len().next_multiple_of(64));
        padded.push_str(name);
        self.0.push(padded);
    }
}

impl Clone for Names {
    fn clone(&self) -> Self {
        let mut names = Names::default();
        for name in &self.0 {
            names.push(name);
        }
        names
    }
}

/// Whether two column names are the same. Names are short, and calling out
/// to memcmp for them cost more than the comparing.
#[inline]
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

impl FromIterator<(String, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(columns: I) -> Self {
        let mut row = Row::default();
        row.extend(columns);
        row
    }
}

impl Extend<(String, Value)> for Row {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, columns: I) {
        for (name, value) in columns {
            self.insert(name, value);
        }
    }
}

impl IntoIterator for Row {
    type Item = (String, Value);
    type IntoIter = std::iter::Zip<std::vec::IntoIter<String>, std::vec::IntoIter<Value>>;

    fn into_iter(self) -> Self::IntoIter {
        let names = Arc::unwrap_or_clone(self.names).0;
        names.into_iter().zip(self.values)
    }
}

/// Rows are equal when they hold the same columns, in whatever order.
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.len() == other.len() && self.iter().all(|(name, v)| other.get(name) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_set_replaced_and_removed_by_name() {
        let mut row: Row = [("A".to_string(), Value::from(1))].into_iter().collect();
        row.set("B", Value::from(2));
        assert_eq!(row.insert("A".into(), Value::from(3)), Some(Value::from(1)));
        assert_eq!(row.get("A"), Some(&Value::from(3)));
        assert_eq!(row.remove("A"), Some(Value::from(3)));
        assert_eq!(row.get("A"), None);
        assert_eq!(row.get("B"), Some(&Value::from(2)));
        assert_eq!(row.len(), 1);
        row.set("B", Value::from(4));
        row.set("C", Value::from(5));
        assert_eq!(row.get("B"), Some(&Value::from(4)));
        assert_eq!(row.get("C"), Some(&Value::from(5)));
    }

    #[test]
    fn long_and_many_names_are_found() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("{}{i}", "COLUMN_".repeat(i)))
            .collect();
        let mut row = Row::default();
        for (i, name) in names.iter().enumerate() {
            row.set(name, Value::from(i));
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(row.get(name), Some(&Value::from(i)), "{name}");
        }
        assert_eq!(row.get("COLUMN_"), None);
        let listed: Vec<String> = row.iter().map(|(name, _)| name.clone()).collect();
        assert_eq!(listed, names);
    }

    #[test]
    fn rows_cloned_from_one_share_names_until_one_changes_them() {
        let mut template = Row::default();
        template.set("X", Value::from(1));
        template.set("Y", Value::from(2));
        let mut copy = template.clone();
        copy.set("X", Value::from(10));
        copy.set("Y", Value::from(20));
        assert!(Arc::ptr_eq(&template.names, &copy.names));
        copy.set("Z", Value::from(30));
        assert!(!Arc::ptr_eq(&template.names, &copy.names));
        assert_eq!(template.get("Z"), None);
        assert_eq!(copy.get("X"), Some(&Value::from(10)));
        let reordered: Row = [
            ("Y".to_string(), Value::from(2)),
            ("X".into(), Value::from(1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(template, reordered);
    }
}
