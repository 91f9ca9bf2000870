//! The tower-sessions store on the cache: records round-trip, live until their
//! expiry (at most the 24-hour ceiling, read back with PTTL), and every session
//! of one user goes with one call.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aside::session::SessionStore;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::json;
use support::Fixture;
use time::OffsetDateTime;
use tower::ServiceExt as _;
use tower_sessions::session::{Id, Record};
use tower_sessions::{Session, SessionManagerLayer, SessionStore as _};

fn record(user: Option<serde_json::Value>, lifetime: time::Duration) -> Record {
    let mut data = HashMap::new();
    data.insert("cart".to_owned(), json!(["book", "pen"]));
    if let Some(user) = user {
        data.insert("user_id".to_owned(), user);
    }
    Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc() + lifetime,
    }
}

async fn store(fixture: &Fixture) -> SessionStore {
    SessionStore::new(fixture.cache().await)
}

async fn create_load_save_delete(fixture: Fixture) {
    let store = store(&fixture).await;
    let mut first = record(Some(json!(7)), time::Duration::hours(1));
    store.create(&mut first).await.unwrap();
    assert_eq!(store.load(&first.id).await.unwrap().as_ref(), Some(&first));

    first.data.insert("cart".to_owned(), json!([]));
    store.save(&first).await.unwrap();
    assert_eq!(store.load(&first.id).await.unwrap().unwrap().data["cart"], json!([]));

    // A taken id is never overwritten by `create`: it draws another.
    let mut clash = record(None, time::Duration::hours(1));
    clash.id = first.id;
    store.create(&mut clash).await.unwrap();
    assert_ne!(clash.id, first.id);
    assert_eq!(store.load(&first.id).await.unwrap().as_ref(), Some(&first));
    assert_eq!(store.load(&clash.id).await.unwrap().as_ref(), Some(&clash));

    store.delete(&first.id).await.unwrap();
    assert_eq!(store.load(&first.id).await.unwrap(), None);
    store.delete(&first.id).await.unwrap(); // deleting twice is fine
    assert_eq!(store.load(&Id::default()).await.unwrap(), None);
}

async fn lifetime_follows_the_expiry_within_the_ceiling(fixture: Fixture) {
    let store = store(&fixture).await;
    let cache = store.cache().clone();
    let hour = record(None, time::Duration::hours(1));
    store.save(&hour).await.unwrap();
    let full = cache.full_key(store.key(&hour.id)).unwrap();
    assert!(full.starts_with("aside:session:"), "{full}");
    let ttl = fixture.ttl_of(&cache, &full).await.unwrap();
    assert!(
        ttl > Duration::from_secs(3500) && ttl <= Duration::from_secs(3600),
        "{ttl:?}"
    );

    let fortnight = record(None, time::Duration::weeks(2));
    store.save(&fortnight).await.unwrap();
    let full = cache.full_key(store.key(&fortnight.id)).unwrap();
    let ttl = fixture.ttl_of(&cache, &full).await.unwrap();
    assert!(
        ttl > Duration::from_secs(86_000) && ttl <= Duration::from_secs(86_400),
        "clamped: {ttl:?}"
    );
    if !fixture.is_memory() {
        let pttl = fixture.pttl(&full).unwrap();
        assert!(pttl > 86_000_000 && pttl <= 86_400_000, "PTTL {pttl}");
    }

    // An expired record is not kept.
    let mut expired = record(None, time::Duration::hours(1));
    store.save(&expired).await.unwrap();
    expired.expiry_date = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    store.save(&expired).await.unwrap();
    assert_eq!(store.load(&expired.id).await.unwrap(), None);
    assert!(!cache.exists(store.key(&expired.id)).await.unwrap());
}

async fn all_sessions_of_a_user_go_at_once(fixture: Fixture) {
    let store = store(&fixture).await;
    let mut ids = Vec::new();
    for user in [json!(7), json!(7), json!("7"), json!(8), serde_json::Value::Null] {
        let mut session = record(Some(user), time::Duration::hours(1));
        store.create(&mut session).await.unwrap();
        ids.push(session.id);
    }
    let mut anonymous = record(None, time::Duration::hours(1));
    store.create(&mut anonymous).await.unwrap();

    assert_eq!(store.delete_user_sessions(&7).await.unwrap(), 3);
    for id in &ids[..3] {
        assert_eq!(store.load(id).await.unwrap(), None);
    }
    assert!(
        store.load(&ids[3]).await.unwrap().is_some(),
        "another user's session stays"
    );
    assert!(store.load(&ids[4]).await.unwrap().is_some());
    assert!(store.load(&anonymous.id).await.unwrap().is_some());
    assert_eq!(store.delete_user_sessions("7").await.unwrap(), 0);

    // A user-id key of the application's choosing.
    let custom = store.clone().user_id_key("account");
    let mut session = record(None, time::Duration::hours(1));
    session.data.insert("account".to_owned(), json!("ada@example.com"));
    custom.save(&session).await.unwrap();
    assert_eq!(custom.delete_user_sessions("ada@example.com").await.unwrap(), 1);
    assert_eq!(custom.load(&session.id).await.unwrap(), None);

    // Every key the store wrote expires.
    for key in fixture.all_keys() {
        let pttl = fixture.pttl(&key).unwrap();
        assert!(pttl > 0 && pttl <= 86_400_000, "{key}: {pttl}");
    }
}

/// Through tower-sessions: a login stores the user id, a second device logs in
/// too, and logging out everywhere ends both sessions.
async fn logout_everywhere_through_the_session_layer(fixture: Fixture) {
    let store = store(&fixture).await;
    let app = Router::new()
        .route(
            "/login/{user}",
            post(
                |session: Session, axum::extract::Path(user): axum::extract::Path<u64>| async move {
                    session.insert("user_id", user).await.unwrap();
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/me",
            get(|session: Session| async move {
                let user: Option<u64> = session.get("user_id").await.unwrap();
                user.map_or_else(|| "anonymous".to_owned(), |user| format!("user {user}"))
            }),
        )
        .layer(SessionManagerLayer::new(store.clone()).with_secure(false));

    let login = || async {
        let response = app
            .clone()
            .oneshot(Request::post("/login/42").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        cookie.split(';').next().unwrap().to_owned()
    };
    let me = |cookie: String| {
        let app = app.clone();
        async move {
            let request = Request::get("/me")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap();
            let body = app.oneshot(request).await.unwrap().into_body().collect().await.unwrap();
            String::from_utf8(body.to_bytes().to_vec()).unwrap()
        }
    };
    let laptop = login().await;
    let phone = login().await;
    assert_ne!(laptop, phone);
    assert_eq!(me(laptop.clone()).await, "user 42");
    assert_eq!(me(phone.clone()).await, "user 42");

    assert_eq!(store.delete_user_sessions(&42).await.unwrap(), 2);
    assert_eq!(me(laptop).await, "anonymous");
    assert_eq!(me(phone).await, "anonymous");
}

on_backends!([memory, redis, cluster]
    lifetime_follows_the_expiry_within_the_ceiling,
    all_sessions_of_a_user_go_at_once,
);

on_backends!([memory, redis]
    create_load_save_delete,
    logout_everywhere_through_the_session_layer,
);
