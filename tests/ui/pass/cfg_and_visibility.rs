//! Companions take the function's `#[cfg]`s and visibility.
#![deny(warnings)]

mod inner {
    use aside::cached;

    #[cached]
    pub(crate) async fn visible(n: u32) -> u32 {
        n
    }

    #[cfg(any())]
    #[cached]
    pub async fn compiled_out(n: u32) -> u32 {
        n
    }

    #[cfg(any())]
    pub fn compiled_out_key(_: u32) -> String {
        unreachable!("never compiled either: the companions are gone with the function")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(inner::visible(1).await, 1);
    assert!(inner::visible_invalidate(1).await.unwrap());
    assert_eq!(inner::visible_refresh(1).await, 1);
    assert!(inner::visible_key(1).starts_with("aside:computed:visible:v1.1:"));
}
