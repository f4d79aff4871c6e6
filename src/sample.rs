//! Sign-in blobs shaped like `shared/fixtures/login-sequence.json`, for the
//! dummy store, the tests and the load generator.

/// Browsers a sample can claim, with their operating systems.
const AGENTS: [(&str, &str, &str); 5] = [
    ("Firefox", "Windows", "17"),
    ("Chrome", "Mac OS X", "23"),
    ("Safari", "iOS", "6"),
    ("Firefox", "Linux", "16"),
    ("IE", "Windows", "9"),
];

/// Languages a sample can claim.
const LANGUAGES: [&str; 4] = ["en_US", "de", "fr", "es"];

/// The JSON text of one login sequence at `timestamp`, varied by `n`.
pub fn login_sequence(timestamp: i64, n: u64) -> String {
    let (browser, os, version) = AGENTS[(n % AGENTS.len() as u64) as usize];
    let language = LANGUAGES[(n / 5 % LANGUAGES.len() as u64) as usize];
    let complete = 4500 + (n * 7919 % 300);
    let email_type = if n.is_multiple_of(3) {
        "primary"
    } else {
        "secondary"
    };
    let new_account = n.is_multiple_of(4);
    format!(
        concat!(
            r#"{{"timestamp":{ts},"event_stream":[["picker",732],["picker::change",1700],"#,
            r#"["picker::signin",2300],["assertion_generation",2500],["certified",3300],"#,
            r#"["assertion_generated",4500],["complete",{complete}]],"email_type":"{email_type}","#,
            r#""number_emails":3,"new_account":{new_account},"language":"{language}","#,
            r#""number_sites_logged_in":1,"screen_size":{{"width":640,"height":480}},"#,
            r#""sample_rate":1.0,"user_agent":{{"os":"{os}","browser":"{browser}","version":"{version}"}}}}"#
        ),
        ts = timestamp,
        complete = complete,
        email_type = email_type,
        new_account = new_account,
        language = language,
        os = os,
        browser = browser,
        version = version,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_valid_blobs() {
        for n in 0..20 {
            let text = super::login_sequence(1_333_046_104_322 + n as i64, n);
            let blobs = crate::blob::parse_submission(&text).unwrap();
            assert_eq!(blobs[0].timestamp, 1_333_046_104_322 + n as i64);
        }
    }
}
