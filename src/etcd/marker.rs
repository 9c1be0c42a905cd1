//! The store marker: one key in the service namespace whose value no other store can hold, by
//! which a watch tells the store it watched from one that lost its data. A wiped etcd that
//! kept its identity (same member name and peer URL: same cluster id) and whose revision has
//! passed hound's looks like the old one in every response header; it cannot have the marker.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;

use super::members::Members;
use crate::error::{Error, Result};

/// The marker's value: `<namespace>/~store` (see `keys.rs`) holds what it held when hound
/// first read it, or etcd is not the store hound watched.
pub(super) async fn read_or_write(
    members: &Members,
    key: &str,
    deadline: Instant,
) -> Result<String> {
    // Read first: a store out of space (NOSPACE) refuses any transaction that could write,
    // and a watch must still reopen then.
    let read = members
        .call(
            deadline,
            |mut client| async move { client.get(key, None).await },
        )
        .await?;
    if let Some(value) = read.kvs().first().map(|kv| kv.value()) {
        return Ok(String::from_utf8_lossy(value).into_owned());
    }
    // Written only if still absent, so every hound (and both watches of each) reads the first
    // value written; without a lease, so it lasts as long as the store. Every attempt puts the
    // same value, so an attempt given up that lands before the retry changes nothing.
    let value = fresh_value();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value.as_str(), None)])
        .or_else([TxnOp::get(key, None)]);
    let answer = members
        .call(deadline, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await?;
    if answer.succeeded() {
        return Ok(value);
    }
    answer
        .op_responses()
        .into_iter()
        .find_map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .map(|value| String::from_utf8_lossy(&value).into_owned())
        .ok_or_else(|| Error::Unavailable(format!("etcd did not return {key}")))
}

/// A value no other store holds: this process and the moment it wrote it.
fn fresh_value() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", std::process::id(), now.as_nanos())
}
