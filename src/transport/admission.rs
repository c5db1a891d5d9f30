//! Who may connect: the total and per-source-address connection caps.

use std::collections::HashMap;
use std::net::IpAddr;

pub struct Admission {
    max_connections: usize,
    /// 0: no per-address cap.
    max_per_ip: usize,
    /// Open connections per source address; an address with none has no entry.
    per_ip: HashMap<IpAddr, u32>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Admission { max_connections, max_per_ip, per_ip: HashMap::new() }
    }

    /// Whether a new connection from `peer` may open while `open` are open, counting it
    /// in if so.
    pub fn admit(&mut self, peer: IpAddr, open: usize) -> bool {
        let from_peer = self.per_ip.get(&peer).copied().unwrap_or(0) as usize;
        if open >= self.max_connections || (self.max_per_ip > 0 && from_peer >= self.max_per_ip) {
            log::debug!("refusing {peer}: {open} connections open, {from_peer} from it");
            return false;
        }
        *self.per_ip.entry(peer).or_default() += 1;
        true
    }

    /// A connection from `peer` has gone.
    pub fn release(&mut self, peer: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_released_addresses_are_forgotten() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut admission = Admission::new(3, 2);
        assert!(admission.admit(a, 0));
        assert!(admission.admit(a, 1));
        assert!(!admission.admit(a, 2), "per-address cap");
        assert!(admission.admit(b, 2));
        assert!(!admission.admit(b, 3), "total cap");
        admission.release(a);
        admission.release(a);
        assert!(!admission.per_ip.contains_key(&a));
        assert!(admission.admit(a, 1));
    }

    #[test]
    fn zero_means_no_per_address_cap() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let mut admission = Admission::new(100, 0);
        assert!((0..100).all(|open| admission.admit(a, open)));
    }
}
