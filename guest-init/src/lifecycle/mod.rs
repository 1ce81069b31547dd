//! The processes of the guest and their lives, kept together: signals set up before
//! anything else ([`signals`]), the one reaper of every child ([`reaper`]), services
//! kept running with backoff ([`service`]), what was started ([`running`]), finding
//! processes by program name ([`pids`]), what stopping means ([`stop`]) and the
//! ordered power-off ([`shutdown`]).

pub mod pids;
pub mod reaper;
pub mod running;
pub mod service;
pub mod shutdown;
pub mod signals;
pub mod stop;
