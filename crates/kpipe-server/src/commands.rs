//! The command log: every statement that changed what the server runs, in
//! order, so that a restarted server (even after kill -9) runs the same
//! sources and queries. ksqlDB keeps this in a command topic; one server per
//! state directory keeps it in a file there.
//!
//! A command is acknowledged only once its line is on disk (`fsync`). A line
//! torn by a crash was never acknowledged and is dropped when the log is read.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One stored statement, with what it needs to run again the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub sql: String,
    /// The request's `streamsProperties` it ran with.
    #[serde(default)]
    pub properties: Vec<(String, String)>,
    /// Where a persistent query began reading, per partition: a restart
    /// reads from there again and so recomputes the same state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Vec<i64>>,
}

pub struct CommandLog {
    path: PathBuf,
    file: File,
    /// How many commands the log holds (the next one's sequence number).
    count: u64,
}

impl CommandLog {
    /// Opens (or creates) the log in `dir` and returns the commands in it.
    pub fn open(dir: &Path) -> Result<(CommandLog, Vec<Command>)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join("commands.jsonl");
        let mut commands = Vec::new();
        let mut intact = 0u64;
        if let Ok(file) = File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str(&line) {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
                intact += line.len() as u64;
                line.clear();
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Cut a torn tail so the next command starts on a line of its own.
        file.set_len(intact)?;
        let count = commands.len() as u64;
        Ok((CommandLog { path, file, count }, commands))
    }

    /// Appends a command durably; returns its sequence number.
    pub fn append(&mut self, command: &Command) -> Result<u64> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.count += 1;
        Ok(self.count - 1)
    }

    /// The sequence number the next command will get.
    pub fn next_sequence(&self) -> u64 {
        self.count
    }

    /// Forgets every command (the cluster was terminated).
    pub fn clear(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.count = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(sql: &str) -> Command {
        Command {
            sql: sql.into(),
            properties: vec![("auto.offset.reset".into(), "earliest".into())],
            started_at: Some(vec![0, 5]),
        }
    }

    #[test]
    fn commands_survive_a_reopen_and_a_torn_tail_is_dropped() {
        let dir = std::env::temp_dir().join(format!("kpipe-commands-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut log, none) = CommandLog::open(&dir).unwrap();
        assert!(none.is_empty());
        assert_eq!(log.append(&command("CREATE STREAM A;")).unwrap(), 0);
        assert_eq!(log.append(&command("CREATE STREAM B;")).unwrap(), 1);
        drop(log);
        // A crash in the middle of writing a third line.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.join("commands.jsonl"))
            .unwrap();
        file.write_all(br#"{"sql":"CREATE STR"#).unwrap();
        drop(file);
        let (mut log, commands) = CommandLog::open(&dir).unwrap();
        assert_eq!(
            commands,
            [command("CREATE STREAM A;"), command("CREATE STREAM B;")]
        );
        assert_eq!(log.append(&command("CREATE STREAM C;")).unwrap(), 2);
        drop(log);
        let (mut log, commands) = CommandLog::open(&dir).unwrap();
        assert_eq!(commands.len(), 3);
        log.clear().unwrap();
        assert_eq!(log.next_sequence(), 0);
        drop(log);
        assert!(CommandLog::open(&dir).unwrap().1.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
