//! Prints the three CRDs as one JSON `List`, ready for `kubectl apply -f -`.
//!
//! ```text
//! cargo run -p netpol-api --example print-crds | kubectl apply -f -
//! ```

fn main() {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": netpol_api::crds()});
    println!(
        "{}",
        serde_json::to_string_pretty(&list).expect("CRDs serialize")
    );
}
