//! A JWKS endpoint on 127.0.0.1 whose answer a test changes at will, and
//! which records when it was fetched. Shared by the auth unit tests
//! (`src/auth/tests.rs`, through `#[path]`) and `tests/auth_attacks.rs`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

pub struct JwksServer {
    pub url: String,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `{"keys": keys}` at `http://127.0.0.1:<free port>/jwks.json`.
    pub async fn start(keys: Value) -> JwksServer {
        let body = Arc::new(Mutex::new((200u16, json!({ "keys": keys }).to_string())));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (b, h) = (body.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (b, h) = (b.clone(), h.clone());
                async move {
                    h.lock().unwrap().push(Instant::now());
                    let (status, body) = b.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWKS server");
        let addr = listener.local_addr().expect("local_addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            body,
            hits,
            task,
        }
    }

    /// From now on, serve these keys.
    pub fn set_keys(&self, keys: Value) {
        *self.body.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
    }

    /// From now on, answer this status and body.
    pub fn set_body(&self, status: u16, body: &str) {
        *self.body.lock().unwrap() = (status, body.to_string());
    }

    /// From now on, answer 503.
    pub fn set_down(&self) {
        *self.body.lock().unwrap() = (503, "down".into());
    }

    /// When each fetch arrived, oldest first.
    pub fn hits(&self) -> Vec<Instant> {
        self.hits.lock().unwrap().clone()
    }

    /// How many fetches arrived.
    pub fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
