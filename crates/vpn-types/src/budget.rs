//! A byte budget shared by everything queued on one path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes everything queued on one path may hold at once: a node's outbound packets, from
/// the TUN read until their frames are written to a stream. Taking from it never waits; what
/// does not fit is refused, and the caller drops it.
#[derive(Debug)]
pub struct ByteBudget {
    held: AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes, none held.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { held: AtomicUsize::new(0), limit })
    }

    /// Takes `bytes`, or `None` when they do not fit in what is left.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<BudgetPermit> {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let next = held.checked_add(bytes).filter(|n| *n <= self.limit)?;
            match self.held.compare_exchange_weak(held, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(BudgetPermit { budget: self.clone(), bytes }),
                Err(now) => held = now,
            }
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The most that may be held.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes taken from a [`ByteBudget`]; they are given back when the permit is dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl BudgetPermit {
    /// The bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes over `other`'s bytes when both come from the same budget, so that they are given
    /// back together; a permit of another budget gives its bytes back now.
    pub fn absorb(&mut self, mut other: BudgetPermit) {
        if Arc::ptr_eq(&self.budget, &other.budget) {
            self.bytes += std::mem::take(&mut other.bytes);
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_gets_it_back_on_drop() {
        let budget = ByteBudget::new(100);
        let first = budget.try_take(60).unwrap();
        assert!(budget.try_take(41).is_none(), "60 + 41 is over 100");
        let second = budget.try_take(40).unwrap();
        assert_eq!(budget.held(), 100);
        assert!(budget.try_take(1).is_none());
        drop(first);
        assert_eq!(budget.held(), 40);
        drop(second);
        assert_eq!(budget.held(), 0);
        assert!(budget.try_take(usize::MAX).is_none(), "no overflow");
    }

    #[test]
    fn absorbed_permits_are_given_back_together() {
        let budget = ByteBudget::new(100);
        let mut all = budget.try_take(10).unwrap();
        all.absorb(budget.try_take(20).unwrap());
        all.absorb(budget.try_take(30).unwrap());
        assert_eq!((all.bytes(), budget.held()), (60, 60));
        drop(all);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_permit_of_another_budget_is_given_back_at_once() {
        let (one, other) = (ByteBudget::new(100), ByteBudget::new(100));
        let mut mine = one.try_take(10).unwrap();
        mine.absorb(other.try_take(50).unwrap());
        assert_eq!((mine.bytes(), one.held(), other.held()), (10, 10, 0));
    }
}
