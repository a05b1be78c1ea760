//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Takes a lock even if a panicking thread poisoned it. Every critical section in this
/// workspace leaves its data consistent before anything in it can panic, so the data is still
/// good; refusing it would turn one panic (already reported by its task's supervision) into a
/// second failure that hides the first.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
