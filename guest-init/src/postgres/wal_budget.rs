//! How much of the data disk WAL may take. PostgreSQL keeps up to `max_wal_size` of WAL
//! between checkpoints, and with archiving on it also keeps every segment the archiver
//! has not taken yet. Fixed sizes meant for a big disk (512 MB between checkpoints and a
//! 256 MiB archive queue on a 1 GiB disk) let WAL alone fill the disk, and a server that
//! crashed there cannot finish crash recovery: it replays all of that WAL and then needs
//! a new segment the disk no longer has. So both budgets are a share of the disk.

/// A WAL segment: PostgreSQL's unit of WAL files (initdb's default).
const SEGMENT_MIB: u64 = 16;

/// The share of the data disk each budget may take (1/16: the two together an eighth).
const DISK_SHARE: u64 = 16;

/// The WAL sizes for one data disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalBudget {
    /// `max_wal_size`: WAL between checkpoints, and so the most crash recovery replays.
    pub max_wal_mib: u64,
    /// `min_wal_size`: WAL kept for reuse after a checkpoint.
    pub min_wal_mib: u64,
    /// pgBackRest's `archive-push-queue-max`: WAL that may wait for an unreachable or slow
    /// repository before pgBackRest drops it (breaking point-in-time recovery, which
    /// status then says, rather than the database).
    pub archive_queue_mib: u64,
}

impl WalBudget {
    /// The budget for a data disk of `total_bytes` (0 when unknown: the smallest).
    pub fn for_disk(total_bytes: u64) -> WalBudget {
        let share = (total_bytes >> 20) / DISK_SHARE;
        let max_wal_mib = whole_segments(share).clamp(4 * SEGMENT_MIB, 1024);
        WalBudget {
            max_wal_mib,
            min_wal_mib: whole_segments(max_wal_mib / 2).clamp(2 * SEGMENT_MIB, 80),
            archive_queue_mib: whole_segments(share).clamp(4 * SEGMENT_MIB, 4096),
        }
    }

    /// The postgresql.conf lines for the checkpoint budget.
    pub fn postgresql_conf_lines(&self) -> String {
        format!(
            "min_wal_size = {}MB\nmax_wal_size = {}MB\n",
            self.min_wal_mib, self.max_wal_mib
        )
    }
}

/// `mib` rounded down to whole WAL segments.
fn whole_segments(mib: u64) -> u64 {
    mib / SEGMENT_MIB * SEGMENT_MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_disk_keeps_wal_to_an_eighth_of_it() {
        let b = WalBudget::for_disk(973 << 20);
        assert_eq!(b.max_wal_mib, 64);
        assert_eq!(b.min_wal_mib, 32);
        assert_eq!(b.archive_queue_mib, 64);
        assert!((b.max_wal_mib + b.archive_queue_mib) * 8 <= 1024 + 64);
    }

    #[test]
    fn larger_disks_get_larger_budgets_up_to_a_cap() {
        let four = WalBudget::for_disk(4 << 30);
        assert_eq!((four.max_wal_mib, four.min_wal_mib), (256, 80));
        assert_eq!(four.archive_queue_mib, 256);
        let huge = WalBudget::for_disk(1 << 40);
        assert_eq!(huge.max_wal_mib, 1024);
        assert_eq!(huge.archive_queue_mib, 4096);
    }

    #[test]
    fn an_unknown_disk_gets_the_smallest_budget_postgres_accepts() {
        let b = WalBudget::for_disk(0);
        assert_eq!((b.max_wal_mib, b.min_wal_mib), (64, 32));
        assert!(b.postgresql_conf_lines().contains("max_wal_size = 64MB"));
    }
}
