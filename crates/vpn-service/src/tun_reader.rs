//! The TUN reader: every packet the kernel routes into the tunnel goes to the dispatcher.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use vpn_api::TunDevice;
use vpn_dispatcher::Dispatcher;

use crate::fault::Fault;

/// Packets read from the TUN at once.
const TUN_BATCH: usize = 64;
/// Pause after a passing TUN read error before reading again.
const TUN_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Reads the TUN and hands every packet to the dispatcher, until the device is gone. A
/// passing read error is logged and reading goes on after a short pause.
pub(crate) async fn read_tun(tun: Arc<dyn TunDevice>, dispatcher: Dispatcher, fault: Fault) {
    let mut batch = Vec::with_capacity(TUN_BATCH);
    let mut errors = 0u64;
    loop {
        match tun.recv_batch(&mut batch, TUN_BATCH).await {
            Ok(_) => {
                for packet in batch.drain(..) {
                    // Drops are counted by the dispatcher.
                    let _ = dispatcher.dispatch(packet);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return fault.tun_gone(tun.as_ref()),
            Err(e) => {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "reading the TUN device failed; reading on");
                }
                tokio::time::sleep(TUN_ERROR_PAUSE).await;
            }
        }
    }
}
