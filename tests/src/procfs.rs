//! The process tree as `/proc` shows it: which processes a run started, and whether any of them
//! is still there after it ended.

use std::collections::HashMap;

/// One process, told apart from a later one that reuses its pid by its start time. Two values
/// are equal when they name the same process (pid and start time), whatever its name then was.
#[derive(Debug, Clone)]
pub struct Process {
    /// The process id.
    pub pid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its command name (`comm`).
    pub name: String,
    /// Start time in clock ticks after boot.
    start_time: u64,
}

impl PartialEq for Process {
    fn eq(&self, other: &Process) -> bool {
        self.pid == other.pid && self.start_time == other.start_time
    }
}

impl Eq for Process {}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug)]
struct Stat {
    process: Process,
    state: char,
    ppid: u32,
}

impl Process {
    /// The process `pid`, if it exists and is not a zombie.
    pub fn find(pid: u32) -> Option<Process> {
        stat(pid)
            .filter(|s| s.state != 'Z')
            .map(|stat| stat.process)
    }

    /// Whether this very process still runs; a zombie (exited, not yet reaped) does not.
    pub fn is_running(&self) -> bool {
        Process::find(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }
}

/// Every running descendant of `pid` (children, their children, ...), parents first.
pub fn descendants(pid: u32) -> Vec<Process> {
    let mut children: HashMap<u32, Vec<Process>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(stat) = stat(pid).filter(|s| s.state != 'Z') {
                children.entry(stat.ppid).or_default().push(stat.process);
            }
        }
    }
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for child in children.remove(&parent).unwrap_or_default() {
            parents.push(child.pid);
            found.push(child);
        }
    }
    found
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields after comm start at field 3 (state); starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat {
        process: Process {
            pid,
            pgid,
            name,
            start_time,
        },
        state,
        ppid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_and_sees_it_go() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let found = descendants(std::process::id());
        let sleep = found
            .iter()
            .find(|p| p.pid == child.id())
            .expect("the child is a descendant")
            .clone();
        assert_eq!(sleep.name, "sleep");
        assert!(sleep.is_running());
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!sleep.is_running());
    }
}
