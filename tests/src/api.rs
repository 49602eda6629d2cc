//! A small client for the gateway's REST API, with the recordings calls
//! the tests use most.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::gateway::Gateway;

pub struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Api {
    pub fn new(gw: &Gateway) -> Self {
        Self::with_token(gw, None)
    }

    pub fn with_token(gw: &Gateway, token: Option<&str>) -> Self {
        Self {
            base: gw.base_url(),
            token: token.map(str::to_owned),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("reqwest client"),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        self.send_body(method, path, headers, Vec::new()).await
    }

    async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(reqwest::Method::GET, path, &[]).await
    }

    /// `GET /api/recordings{query}`, checked for shape.
    pub async fn list(&self, query: &str) -> Result<(Vec<Value>, u64)> {
        let reply = self.get(&format!("/api/recordings{query}")).await?;
        ensure!(
            reply.status == 200,
            "GET /api/recordings{query} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json()?;
        let items = body["items"]
            .as_array()
            .with_context(|| format!("no items array: {body}"))?
            .clone();
        let total = body["total"]
            .as_u64()
            .with_context(|| format!("no total: {body}"))?;
        Ok((items, total))
    }

    pub async fn control(&self, stream: &str, action: &str) -> Result<u16> {
        let reply = self
            .send(
                reqwest::Method::POST,
                &format!("/api/streams/{stream}/recording/{action}"),
                &[],
            )
            .await?;
        Ok(reply.status)
    }

    /// Polls until a recording of `stream` satisfies `pred`, or `limit`.
    pub async fn wait_item(
        &self,
        stream: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            match self.list(&format!("?stream={stream}")).await {
                Ok((items, _)) => {
                    if let Some(item) = items.iter().find(|i| pred(i)) {
                        return Ok(item.clone());
                    }
                    last = items;
                }
                Err(e) => last = vec![Value::String(e.to_string())],
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no recording of {stream} became {what} within {limit:?}; last list: {last:?}")
    }
}

impl Api {
    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        let headers = [("Content-Type", "application/json")];
        self.send_body(
            reqwest::Method::POST,
            path,
            &headers,
            body.to_string().into_bytes(),
        )
        .await
    }
}
