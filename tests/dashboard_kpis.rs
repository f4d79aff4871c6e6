//! The dashboard's KPIs in a real headless Chromium against a real
//! kpiggybank (issue 13): with 200 sign-ins of the last four minutes stored
//! before the page opens, the first paint shows all 200 in the 5-minute
//! rate chart, the tiles and the breakdowns (they come from the server's
//! rollups, not from the blobs the page receives); new sign-ins show up
//! live; the range explorer charts 15 minutes from rollups without
//! downloading blobs, and a bar lists its bucket's blobs; a stopped server
//! marks the figures stale and a restarted one, whose live counts begin
//! empty, brings them back with the stored figures. Screenshots go to
//! `target/dashboard-kpis.png`, `-stale.png` and `-phone.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`./scripts/test`
//! installs them and sets `KPIGGYBANK_CHROMIUM`, `KPIGGYBANK_CHROMEDRIVER`);
//! without them this test fails, it does not skip.

mod support;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Server, login_blob};
use webdriver::{Driver, Session};

/// Generous bound for what has no promised latency (page load, reconnect).
const PATIENCE: Duration = Duration::from_secs(10);

/// Sign-ins stored before the page opens, one every 1.2 s over four minutes.
const EARLY: i64 = 200;

/// Sign-ins posted at once while the page is open: one bucket holds more
/// than the 100 a bucket lists.
const BURST: i64 = 150;

/// The range explorer's bucket for 15 minutes (chosen by the page: ≤ 150 buckets).
const RANGE_BUCKET_MS: i64 = 10_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

async fn save_screenshot(page: &Session, name: &str) -> PathBuf {
    let png = page.screenshot().await;
    assert_eq!(&png[1..4], b"PNG", "a PNG screenshot");
    let path = target_dir().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    path
}

async fn text_of(page: &Session, selector: &str) -> String {
    page.execute(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        json!([selector]),
    )
    .await
    .as_str()
    .unwrap_or_else(|| panic!("no element {selector}"))
    .to_string()
}

/// The sum of the bars a chart drew (each carries its value in `data-v`).
const CHART_SUM: &str = "return [...document.querySelectorAll(arguments[0] + ' rect.bar')]
    .reduce((sum, r) => sum + Number(r.dataset.v), 0);";

async fn chart_sum(page: &Session, chart: &str) -> i64 {
    page.execute(CHART_SUM, json!([chart]))
        .await
        .as_i64()
        .unwrap()
}

/// Per breakdown of `container`: its key and the sum of its rows' counts.
async fn breakdown_sums(page: &Session, container: &str) -> Value {
    page.execute(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0] + ' .breakdown')].map(b =>
           [b.dataset.key, [...b.querySelectorAll('g.row')].reduce((s, g) => s + Number(g.dataset.n), 0)]));",
        json!([container]),
    )
    .await
}

fn all_equal(sums: &Value, n: i64) -> bool {
    let sums = sums.as_object().unwrap();
    sums.len() == 5 && sums.values().all(|v| v.as_i64() == Some(n))
}

/// Fails on anything the page's own error trap caught.
async fn assert_no_page_errors(page: &Session, when: &str) {
    let errors = page.execute("return window.__pageErrors;", json!([])).await;
    assert_eq!(errors, json!([]), "page errors {when}");
}

/// Every blob range the page read: its query as {start, end, limit}.
async fn range_reads(page: &Session) -> Vec<Value> {
    let reads = page
        .execute(
            "return performance.getEntriesByType('resource')
               .map(e => new URL(e.name))
               .filter(u => u.pathname === '/wsapi/interaction_data' && u.search)
               .map(u => Object.fromEntries(u.searchParams));",
            json!([]),
        )
        .await;
    reads.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_tells_the_truth_from_its_first_paint() {
    let (mut server, _data) = Server::start(&[]);
    let start = now_ms();
    // Every tenth in seconds, as older producers send them: the server
    // places those by their time, and a bucket must list them too.
    let early: Vec<Value> = (0..EARLY)
        .map(|n| {
            let ts = start - 240_000 + n * 1_200;
            let mut blob = login_blob(ts, n as u64);
            if n % 10 == 0 {
                blob["timestamp"] = json!(ts / 1000);
            }
            blob
        })
        .collect();
    let early_ids = server.store(&early).await;

    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let page = driver.session(profile.path()).await;
    page.viewport(1280, 900, false).await;
    page.goto(&server.url("/")).await;
    // Keep every request the page makes, not only the first 250.
    page.execute(
        "performance.setResourceTimingBufferSize(100000);",
        json!([]),
    )
    .await;

    // The first paint: all 200 in the rate chart, the tiles and the
    // breakdowns, though the feed replays only the last 100.
    let first = page
        .wait_for(
            "the first paint",
            PATIENCE,
            "return kpiggybankDashboard.firstPaint;",
        )
        .await;
    assert_eq!(first["rate"], json!(EARLY), "{first}");
    assert_eq!(first["count5m"], json!(EARLY), "{first}");
    assert_eq!(first["count1h"], json!(EARLY), "{first}");
    eprintln!("first paint from {}", first["sources"]);
    assert_eq!(chart_sum(&page, "#rate-chart").await, EARLY);
    assert_eq!(text_of(&page, "#count-5m").await, "200");
    assert_eq!(text_of(&page, "#count-1h").await, "200");
    assert!(text_of(&page, "#median").await.ends_with(" s"));
    assert!(text_of(&page, "#p95").await.ends_with(" s"));
    let sums = breakdown_sums(&page, "#breakdowns").await;
    assert!(all_equal(&sums, EARLY), "breakdown sums {sums}");
    let browsers = text_of(&page, "#breakdowns [data-key=\"browser\"] svg").await;
    assert!(
        browsers.contains("Firefox") && browsers.contains("80"),
        "{browsers}"
    );
    assert!(
        text_of(&page, "#breakdown-hint")
            .await
            .contains("last hour")
    );
    page.wait_for(
        "the replay in the feed",
        PATIENCE,
        "return document.querySelectorAll('#feed li').length === 100;",
    )
    .await;

    // Live: the page follows the server's live rollup, and a burst of new
    // sign-ins shows up in the tiles and the rate chart within seconds.
    page.wait_for(
        "the live figures",
        PATIENCE,
        "const b = kpiggybankDashboard;
         return b.state === 'live' && b.frames > 0 && b.sources['5m'] === 'live' && b.sources['1h'] === 'live';",
    )
    .await;
    // In a 10-second bucket of its own (the range explorer's), so that
    // every other bucket holds early sign-ins only.
    let last_early = start - 240_000 + (EARLY - 1) * 1_200;
    while now_ms() / RANGE_BUCKET_MS == last_early / RANGE_BUCKET_MS {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = now_ms();
    let burst: Vec<Value> = (0..BURST)
        .map(|n| login_blob(at, (EARLY + n) as u64))
        .collect();
    server.store(&burst).await;
    let total = EARLY + BURST;
    page.wait_for(
        "the burst in the tiles and the rate chart",
        PATIENCE,
        &format!(
            "return document.getElementById('count-5m').textContent === '350'
               && document.getElementById('count-1h').textContent === '350'
               && document.getElementById('total').textContent === '350'
               && ({CHART_SUM_FN})('#rate-chart') === {total};",
            CHART_SUM_FN = "(c) => [...document.querySelectorAll(c + ' rect.bar')].reduce((s, r) => s + Number(r.dataset.v), 0)"
        ),
    )
    .await;
    let sums = breakdown_sums(&page, "#breakdowns").await;
    assert!(all_equal(&sums, total), "breakdown sums {sums}");
    let feed_rate = text_of(&page, "#feed-rate").await;
    assert!(feed_rate.contains("sign-ins/s stored"), "{feed_rate}");

    // The range explorer over 15 minutes: the same totals, from rollups.
    page.execute(
        "document.querySelector('.presets button[data-minutes=\"15\"]').click();",
        json!([]),
    )
    .await;
    page.wait_for(
        "the 15-minute window",
        PATIENCE,
        "const c = document.getElementById('range-count'); return c && c.textContent === '350';",
    )
    .await;
    assert_eq!(chart_sum(&page, "#range-rate-chart").await, total);
    let sums = breakdown_sums(&page, "#range-breakdowns").await;
    assert!(all_equal(&sums, total), "range breakdown sums {sums}");
    assert!(text_of(&page, "#range-bucket").await.contains("10 s"));
    assert!(
        page.execute(
            "return document.querySelectorAll('#range-duration-chart rect.bar').length;",
            json!([])
        )
        .await
        .as_u64()
        .unwrap()
            > 0
    );
    assert_eq!(
        range_reads(&page).await,
        Vec::<Value>::new(),
        "the range explorer downloads no blobs"
    );

    // Each bar lists its bucket's blobs: all of them up to 100, both
    // spellings of timestamps, and "showing 100 of 150+" for the burst.
    let bars = page
        .execute(
            "return [...document.querySelectorAll('#range-rate-chart rect.hit')].map(h => {
               const bar = h.previousElementSibling;
               return [Number(h.dataset.index), Number(bar.dataset.v)];
             });",
            json!([]),
        )
        .await;
    let bars: Vec<(u64, i64)> = serde_json::from_value(bars).unwrap();
    assert!(bars.len() >= 20, "{bars:?}");
    assert_eq!(bars.iter().map(|(_, v)| v).sum::<i64>(), total);
    assert_eq!(
        bars.iter().filter(|(_, v)| *v >= BURST).count(),
        1,
        "the burst has a bucket of its own: {bars:?}"
    );
    let mut listed = std::collections::HashSet::new();
    for (index, count) in &bars {
        page.execute(
            "document.querySelector(`#range-rate-chart rect.hit[data-index=\"${arguments[0]}\"]`)
               .dispatchEvent(new MouseEvent('click', { bubbles: true }));",
            json!([index]),
        )
        .await;
        let shown = (*count).min(100);
        page.wait_for(
            &format!("bucket {index} listed"),
            PATIENCE,
            &format!(
                "const t = document.getElementById('bucket-title').textContent;
                 return document.querySelectorAll('#bucket-list li').length === {shown}
                   && t.includes('showing {shown} of {count} sign-ins');"
            ),
        )
        .await;
        let ids = page
            .execute(
                "return [...document.querySelectorAll('#bucket-list li')].map(li => li.dataset.id);",
                json!([]),
            )
            .await;
        let ids: Vec<String> = serde_json::from_value(ids).unwrap();
        for id in ids {
            assert!(listed.insert(id), "a blob listed in two buckets");
        }
    }
    assert_eq!(
        listed.len() as i64,
        EARLY + 100,
        "every early blob, and 100 of the burst"
    );
    // The keyboard: the chart is one tab stop; Home, → and Enter list the
    // second bucket, and the focus stays on the chart across redraws.
    let (second, second_count) = bars[1];
    page.execute(
        "const chart = document.getElementById('range-rate-chart');
         chart.focus();
         for (const key of ['Home', 'ArrowRight', 'Enter']) {
           chart.dispatchEvent(new KeyboardEvent('keydown', { key, bubbles: true }));
         }",
        json!([]),
    )
    .await;
    page.wait_for(
        "the second bucket listed from the keyboard",
        PATIENCE,
        &format!(
            "return document.querySelectorAll('#bucket-list li').length === {second_count}
               && document.querySelector('#range-rate-chart rect.bar.selected')
               && document.activeElement === document.getElementById('range-rate-chart')
               && document.getElementById('range-pick-help').textContent.includes('Enter lists them');"
        ),
    )
    .await;
    let selected = page
        .execute(
            "return Number(document.querySelector('#range-rate-chart rect.bar.selected').nextElementSibling.dataset.index);",
            json!([]),
        )
        .await;
    assert_eq!(selected, json!(second));
    assert!(
        early_ids.iter().all(|id| listed.contains(id)),
        "every early blob is listed"
    );
    // Only bucket lists were read: at most 100 blobs, within one bucket.
    let reads = range_reads(&page).await;
    assert!(!reads.is_empty());
    for read in &reads {
        assert_eq!(read["limit"], json!("100"), "{read}");
        let (s, e): (i64, i64) = (
            read["start"].as_str().unwrap().parse().unwrap(),
            read["end"].as_str().unwrap().parse().unwrap(),
        );
        let width = if s < 100_000_000_000 {
            RANGE_BUCKET_MS / 1000
        } else {
            RANGE_BUCKET_MS
        };
        assert!(e - s < width, "a read wider than a bucket: {read}");
    }
    assert_eq!(
        page.execute("return kpiggybankDashboard.feedMode;", json!([]))
            .await,
        json!("follow")
    );

    assert_no_page_errors(&page, "after loading and using the page").await;
    page.execute(
        "document.getElementById('range').scrollIntoView();",
        json!([]),
    )
    .await;
    let range = save_screenshot(&page, "dashboard-kpis-range.png").await;
    page.execute("scrollTo(0, 0);", json!([])).await;
    let wide = save_screenshot(&page, "dashboard-kpis.png").await;

    // The server stops: the figures are marked stale and say since when.
    server.stop().await;
    page.wait_for(
        "the figures to look stale",
        PATIENCE,
        "return document.getElementById('tiles').dataset.stale === 'true'
           && document.getElementById('charts').dataset.stale === 'true'
           && !document.getElementById('stale-note').hidden
           && document.getElementById('status').dataset.state === 'reconnecting';",
    )
    .await;
    assert!(
        text_of(&page, "#stale-note")
            .await
            .contains("Figures as of")
    );
    let stale = save_screenshot(&page, "dashboard-kpis-stale.png").await;

    // It starts again on the same port and data, its live hour read from
    // the store, and the page no longer looks stale.
    server.restart().await;
    page.wait_for(
        "the figures to be live again",
        PATIENCE,
        "return document.getElementById('tiles').dataset.stale === 'false'
           && document.getElementById('stale-note').hidden
           && kpiggybankDashboard.state === 'live';",
    )
    .await;
    // The restarted node's live hour was read from the store: the live
    // frames themselves are whole.
    page.wait_for(
        "the whole last hour from the live frames after the restart",
        PATIENCE,
        "const b = kpiggybankDashboard;
         return b.sources['1h'] === 'live' && document.getElementById('count-1h').textContent === '350';",
    )
    .await;
    server
        .store(
            &(0..5)
                .map(|n| login_blob(now_ms(), 400 + n))
                .collect::<Vec<_>>(),
        )
        .await;
    page.wait_for(
        "the sign-ins stored after the restart",
        PATIENCE + Duration::from_secs(5),
        "return document.getElementById('count-1h').textContent === '355'
           && document.getElementById('total').textContent === '355';",
    )
    .await;
    assert_no_page_errors(&page, "after the restart").await;

    // Phone width: one column, nothing wider than the screen.
    page.viewport(390, 844, true).await;
    page.wait_for(
        "the phone layout",
        PATIENCE,
        "return innerWidth === 390 && document.documentElement.scrollWidth <= innerWidth;",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = page
        .execute(
            "return [...document.querySelectorAll('main *, header *')]
               .filter(e => e.getBoundingClientRect().right > innerWidth + 1 && e.closest('.feed, pre') === null)
               .map(e => e.tagName + '.' + e.className);",
            json!([]),
        )
        .await;
    assert_eq!(overflow, json!([]), "elements wider than a phone");
    let phone = save_screenshot(&page, "dashboard-kpis-phone.png").await;
    // Further down: the charts, then the range explorer, at phone width.
    page.execute(
        "document.getElementById('charts').scrollIntoView();",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    save_screenshot(&page, "dashboard-kpis-phone-charts.png").await;
    page.execute(
        "document.getElementById('range').scrollIntoView();",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    save_screenshot(&page, "dashboard-kpis-phone-range.png").await;
    assert_no_page_errors(&page, "at phone width").await;

    page.quit().await;
    eprintln!(
        "screenshots: {}, {}, {}, {} (and -phone-charts, -phone-range)",
        wide.display(),
        range.display(),
        stale.display(),
        phone.display()
    );
}

/// A feed faster than the page can follow, from a server that does not
/// sample it: the page stops following, polls the newest sign-ins with the
/// true rate beside them, and follows again once the rate falls. The limit
/// is lowered to 120 a second (`?feed_max=`) so that a burst of 150 is too
/// fast: the machine that runs the tests cannot post 2,000 a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_too_fast_to_follow_is_polled_until_it_slows_down() {
    // The WebDriver client is a reqwest client too, built before any
    // support::http() here: it needs the crypto provider installed first.
    support::install_crypto();
    let (server, _data) = Server::start(&[]);
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let page = driver.session(profile.path()).await;
    page.viewport(1280, 900, false).await;
    // A limit below the sample the page asks of the server (50 a second),
    // so even the sampled feed is too fast and the page must poll.
    page.goto(&server.url("/?feed_max=20")).await;
    page.wait_for(
        "the page to go live",
        PATIENCE,
        "return kpiggybankDashboard.state === 'live' && kpiggybankDashboard.frames > 0;",
    )
    .await;
    let at = now_ms();
    let burst: Vec<Value> = (0..BURST)
        .map(|n| login_blob(at - BURST + n, n as u64))
        .collect();
    let ids = server.store(&burst).await;
    page.wait_for(
        "the page to poll instead of following",
        PATIENCE,
        "return kpiggybankDashboard.feedMode === 'poll'
           && document.getElementById('feed-rate').textContent.includes('too many to follow');",
    )
    .await;
    // The feed stopped following: the polls bring the 20 newest by
    // timestamp (the last posted), newest at the top, each shown once.
    page.wait_for(
        "the 20 newest sign-ins in the feed, once each",
        PATIENCE,
        &format!(
            "return {0}.every(id => document.querySelectorAll(`#feed li[data-id=\"${{id}}\"]`).length === 1)
               && document.querySelector('#feed li').dataset.id === {1};",
            json!(ids[ids.len() - 20..]),
            json!(ids[ids.len() - 1])
        ),
    )
    .await;
    let switches = page
        .execute("return kpiggybankDashboard.feedSwitches;", json!([]))
        .await;
    assert_eq!(switches[0]["to"], json!("poll"), "{switches}");
    assert!(
        switches[0]["perSecond"].as_u64().unwrap() > 20,
        "{switches}"
    );
    assert!(
        page.execute(
            "return document.querySelectorAll('#feed li').length;",
            json!([])
        )
        .await
        .as_u64()
        .unwrap()
            <= 100
    );
    // The burst leaves the last ten seconds: the page follows again, from now.
    page.wait_for(
        "the page to follow again",
        PATIENCE + Duration::from_secs(10),
        "return kpiggybankDashboard.feedMode === 'follow' && kpiggybankDashboard.changesState === 'live';",
    )
    .await;
    let later = server.store(&vec![login_blob(now_ms(), 999)]).await;
    page.wait_for(
        "a sign-in followed live again",
        PATIENCE,
        &format!(
            "return document.querySelector('#feed li').dataset.id === {};",
            json!(later[0])
        ),
    )
    .await;
    let text = text_of(&page, "#feed-rate").await;
    assert!(text.contains("showing every one"), "{text}");
    assert_no_page_errors(&page, "after polling and following again").await;
    page.quit().await;
}
