//! Secure-etcd helpers for `secure_etcd.rs`: TLS and user/password clients, enabling auth.

use std::time::Duration;

use super::EtcdClient;

impl EtcdClient {
    /// Like [`EtcdClient::connect`], with TLS material or credentials in `options`. With a user
    /// this authenticates at once, so etcd must be up and accept the password.
    pub fn connect_with(url: &str, options: etcd_client::ConnectOptions) -> EtcdClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    Self::CALL,
                    etcd_client::Client::connect([url.to_owned()], Some(options)),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("connecting to etcd at {url} timed out"))
            .unwrap_or_else(|err| panic!("cannot connect to etcd at {url}: {err}"));
        EtcdClient { runtime, client }
    }

    /// etcd's version, or why it did not answer within `within` (for polls that must not panic).
    pub fn try_version(&mut self, within: Duration) -> Result<String, String> {
        let mut client = self.client.clone();
        match self
            .runtime
            .block_on(async { tokio::time::timeout(within, client.status()).await })
        {
            Ok(Ok(status)) => Ok(status.version().to_owned()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    }

    /// Creates user `root` with `password` and the root role, then turns authentication on:
    /// from then on every client must log in.
    pub fn enable_auth(&mut self, password: &str) {
        let password = password.to_owned();
        self.call("role add", |mut c| async move { c.role_add("root").await });
        self.call("user add", |mut c| async move {
            c.user_add("root", password, None).await
        });
        self.call("user grant-role", |mut c| async move {
            c.user_grant_role("root", "root").await
        });
        self.call("auth enable", |mut c| async move { c.auth_enable().await });
    }
}
