//! The writer's pure parts: status classes, Retry-After, backoff, one-line messages, gzip.

use super::*;

#[test]
fn statuses() {
    let message = || "m".to_string();
    assert_eq!(
        classify(StatusCode::NO_CONTENT, None, String::new()),
        Outcome::Written
    );
    for retried in [429, 500, 502, 503, 504] {
        let status = StatusCode::from_u16(retried).expect("status");
        assert!(
            matches!(classify(status, None, message()), Outcome::Retry { .. }),
            "{retried}"
        );
    }
    let outcome = classify(
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(3)),
        message(),
    );
    assert_eq!(
        outcome,
        Outcome::Retry {
            reason: "the server answered 429 Too Many Requests: m".into(),
            retry_after: Some(Duration::from_secs(3))
        }
    );
    for refused in [400, 401, 403, 404, 422, 301] {
        let status = StatusCode::from_u16(refused).expect("status");
        assert_eq!(
            classify(status, None, message()),
            Outcome::Rejected {
                status: refused,
                message: message()
            }
        );
    }
    assert_eq!(
        classify(StatusCode::PAYLOAD_TOO_LARGE, None, message()),
        Outcome::TooLarge { message: message() }
    );
}

#[test]
fn retry_after_seconds_capped() {
    let header = |v: &str| HeaderValue::from_str(v).expect("header");
    assert_eq!(
        parse_retry_after(Some(&header("2"))),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        parse_retry_after(Some(&header("86400"))),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(
        parse_retry_after(Some(&header("Wed, 21 Oct 2015 07:28:00 GMT"))),
        None
    );
    assert_eq!(parse_retry_after(None), None);
    // delay-seconds is digits only; whitespace around them is allowed.
    assert_eq!(parse_retry_after(Some(&header("+5"))), None);
    assert_eq!(parse_retry_after(Some(&header("-1"))), None);
    assert_eq!(parse_retry_after(Some(&header(""))), None);
    assert_eq!(
        parse_retry_after(Some(&header(" 7\t"))),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        parse_retry_after(Some(&header("99999999999999999999999"))),
        Some(MAX_RETRY_AFTER)
    );
}

#[test]
fn backoff_doubles_to_its_cap_with_jitter() {
    let mut backoff = Backoff::default();
    let full: Vec<u64> = (0..8)
        .map(|_| backoff.next_delay(0.999_999).as_secs())
        .collect();
    assert_eq!(full, [0, 1, 3, 7, 15, 29, 29, 29]);
    backoff.reset();
    assert_eq!(backoff.next_delay(0.0), Duration::from_millis(500));
    assert_eq!(backoff.next_delay(0.0), Duration::from_secs(1));
    for _ in 0..100 {
        let r = jitter();
        assert!((0.0..1.0).contains(&r), "{r}");
    }
}

#[test]
fn messages_are_one_line() {
    assert_eq!(
        one_line_message(
            b"{\"error\":\"database not found: \\\"x\\\"\"}\n",
            StatusCode::NOT_FOUND
        ),
        "{\"error\":\"database not found: \\\"x\\\"\"}"
    );
    assert_eq!(
        one_line_message(b"", StatusCode::BAD_REQUEST),
        "(no message; 400 Bad Request)"
    );
    let long = vec![b'x'; 1000];
    assert_eq!(
        one_line_message(&long, StatusCode::BAD_REQUEST).len(),
        MAX_MESSAGE_CHARS + 3
    );
    assert_eq!(one_line_message(b"a\nb", StatusCode::BAD_REQUEST), "a b");
}

#[test]
fn gzip_round_trip() {
    use std::io::Read;
    let body = b"synproxy,host=a syn_received=1i 1\n".repeat(100);
    let compressed = gzip(&body).expect("gzip");
    assert!(compressed.len() < body.len());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut plain)
        .expect("gunzip");
    assert_eq!(plain, body);
}
