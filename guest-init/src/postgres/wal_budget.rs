//! How much of the data disk WAL may take. PostgreSQL keeps up to `max_wal_size` of WAL
//! between checkpoints, and with archiving on it also keeps every segment the archiver
//! has not taken yet. Fixed sizes meant for a big disk (512 MB between checkpoints and a
//! 256 MiB archive queue on a 1 GiB disk) let WAL alone fill the disk, and a server that
//! crashed there cannot finish crash recovery: it replays all of that WAL and then needs
//! a new segment the disk no longer has. So every budget is a share of the disk: the
//! WAL between checkpoints, the archive queue, and what replication keeps: a slot
//! whose replica is gone holds WAL only up to `max_slot_wal_keep_size`, after which
//! PostgreSQL invalidates it (the replica must then be copied anew) rather than let it
//! fill the disk.

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
    /// `max_slot_wal_keep_size`: the most WAL a replication slot may hold back.
    pub slot_keep_mib: u64,
    /// `wal_keep_size`: WAL kept for a replica regardless of slots (what a rejoined
    /// node replays from before its slot existed).
    pub wal_keep_mib: u64,
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
            slot_keep_mib: whole_segments(share * 2).clamp(4 * SEGMENT_MIB, 8192),
            wal_keep_mib: whole_segments(share / 2).clamp(2 * SEGMENT_MIB, 1024),
        }
    }

    /// The postgresql.conf lines for the checkpoint and replication budgets.
    pub fn postgresql_conf_lines(&self) -> String {
        format!(
            "min_wal_size = {}MB\nmax_wal_size = {}MB\nmax_slot_wal_keep_size = {}MB\nwal_keep_size = {}MB\n",
            self.min_wal_mib, self.max_wal_mib, self.slot_keep_mib, self.wal_keep_mib
        )
    }

    /// The most WAL this budget lets the data disk hold, in MiB: between checkpoints,
    /// queued for the archive, kept for replication.
    pub fn worst_case_mib(&self) -> u64 {
        self.max_wal_mib + self.archive_queue_mib + self.slot_keep_mib + self.wal_keep_mib
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
        assert_eq!((b.slot_keep_mib, b.wal_keep_mib), (112, 32));
        assert!(
            b.worst_case_mib() * 3 < 973,
            "WAL of every kind stays under a third of the disk: {b:?}"
        );
    }

    #[test]
    fn larger_disks_get_larger_budgets_up_to_a_cap() {
        let four = WalBudget::for_disk(4 << 30);
        assert_eq!((four.max_wal_mib, four.min_wal_mib), (256, 80));
        assert_eq!(four.archive_queue_mib, 256);
        assert_eq!((four.slot_keep_mib, four.wal_keep_mib), (512, 128));
        assert!(four
            .postgresql_conf_lines()
            .contains("max_slot_wal_keep_size = 512MB\nwal_keep_size = 128MB\n"));
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
