//! The Nexmark event generator: event number `i` in, event out, as a pure function.
//!
//! It follows the semantics of the Nexmark benchmark's reference generator (Beam's and
//! Flink's): of every 50 events, 1 is a new person, 3 are new auctions and 46 are bids; ids are
//! derived from the event number so that bids name auctions and people that exist (or are about
//! to); half of the bids go to a "hot" auction and three quarters come from a "hot" bidder;
//! prices are log-uniform between $1 and $1M; event time advances a fixed delay per event.
//!
//! Unlike the reference, every random draw comes from a PRNG seeded by the event number alone,
//! so any event can be regenerated on its own: a source restored at event `i` emits exactly what
//! the original run emitted from `i` on, whatever the parallelism that generated the rest.
//! The `extra` padding field is kept short (the reference pads events to average byte sizes),
//! so that the generator's cost is the events' content, not filler.

use std::sync::OnceLock;

use crate::data::Timestamp;
use crate::error::EngineError;
use crate::text::Text;

use super::model::{Auction, Bid, Event, EventKind, Person};

// Event mix: of every PROPORTION_DENOMINATOR events, the first PERSON_PROPORTION are people,
// the next AUCTION_PROPORTION auctions, the rest bids.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const PROPORTION_DENOMINATOR: u64 = 50;

const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;

/// Bids and auctions pick people among the most recent this many.
const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// Bids pick auctions among the most recent this many.
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// Random ids may run this far past the newest person or auction (an id "about to" exist).
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;

/// 1 in HOT_AUCTION_RATIO bids picks a random auction, the rest the current hot one.
const HOT_AUCTION_RATIO: u64 = 2;
/// 1 in HOT_BIDDER_RATIO bids comes from a random bidder, the rest from the hot one.
const HOT_BIDDER_RATIO: u64 = 4;
/// 1 in HOT_SELLER_RATIO auctions is by a random seller, the rest by the hot one.
const HOT_SELLER_RATIO: u64 = 4;
/// The hot auction, bidder and seller are the first (the bidder: second, so it is not also the
/// hot seller) of the latest batch of this many auctions or people.
const HOT_BATCH: u64 = 100;
/// 1 in HOT_CHANNEL_RATIO bids comes through a random channel, the rest a hot one.
const HOT_CHANNEL_RATIO: u64 = 2;
const NUM_CHANNELS: u64 = 10_000;

const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];

/// Seeds every event's PRNG together with the event number (fixed: runs are reproducible).
const SEED: u64 = 0x6e65_786d_6172_6b21;

/// The largest `events_per_second_of_event_time`: one event per nanosecond of event time.
pub const MAX_EVENTS_PER_SECOND: u64 = 1_000_000_000;

/// SplitMix64: a tiny PRNG whose whole state is one word, so seeding it per event is free.
struct Rng(u64);

impl Rng {
    fn for_event(index: u64) -> Self {
        // Mixing the seed first keeps the streams of neighbouring events unrelated.
        Rng(mix(index ^ SEED))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift: no division, negligible bias for the
    /// small bounds used here.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }

    /// Appends `len` random lower-case letters, about one in 13 a space instead.
    fn push_letters(&mut self, out: &mut String, len: u64) {
        for _ in 0..len {
            let r = self.below(26 * 13);
            if r < 26 {
                out.push(' ');
            } else {
                out.push(char::from(b'a' + (r % 26) as u8));
            }
        }
    }

    /// A string of 3 to `max_len - 1` characters, without spaces at either end (so possibly
    /// shorter).
    fn string(&mut self, max_len: u64) -> String {
        let len = 3 + self.below(max_len - 3);
        let mut s = String::with_capacity(len as usize);
        self.push_letters(&mut s, len);
        if s.starts_with(' ') || s.ends_with(' ') {
            s = s.trim().to_string();
        }
        s
    }

    /// A price in cents, log-uniform from $1 to $1M.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }

    /// The short `extra` field: 0 to 7 letters, without spaces.
    /// Short enough to be held inline in a row: no allocation.
    fn extra(&mut self) -> Text {
        let mut bits = self.next_u64();
        let len = (bits & 7) as usize;
        let mut letters = [0u8; 7];
        for letter in &mut letters[..len] {
            bits >>= 5;
            *letter = b'a' + ((bits & 31) % 26) as u8;
        }
        Text::new(std::str::from_utf8(&letters[..len]).unwrap_or_default())
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A channel name and the URL its bids come from. Every bid of a channel shares these two
/// strings, as Flink's Nexmark generator shares its cached channel strings.
#[derive(Debug)]
struct Channel {
    name: Text,
    url: Text,
}

/// The hot channels, then the numbered ones.
#[derive(Debug)]
struct Channels {
    hot: Vec<Channel>,
    numbered: Vec<Channel>,
}

/// The channel table, built once per process (a millisecond's work, about 1 MiB) and never
/// freed: its strings are `'static`, so a bid copies two pointers and writes nothing to the
/// table, and every parallel subtask reads the same cache lines (see `crate::text`).
fn channels() -> &'static Channels {
    static CHANNELS: OnceLock<Channels> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let leak = |text: String| Text::from_static(Box::leak(text.into_boxed_str()));
        let hot = HOT_CHANNELS
            .iter()
            .zip(0u64..)
            .map(|(name, n)| Channel {
                name: Text::from_static(name),
                url: leak(channel_url(mix(n ^ SEED.rotate_left(17)), None)),
            })
            .collect();
        let numbered = (0..NUM_CHANNELS)
            .map(|n| {
                // A channel's URL is random but fixed per channel: seeded by its number. Nine
                // in ten also carry the channel's id.
                let seed = mix(n ^ !SEED);
                let id =
                    (!seed.is_multiple_of(10)).then(|| (n as i32).reverse_bits().unsigned_abs());
                Channel {
                    name: leak(format!("channel-{n}")),
                    url: leak(channel_url(seed, id)),
                }
            })
            .collect();
        Channels { hot, numbered }
    })
}

/// A URL of three random path segments, with the channel id if there is one.
fn channel_url(seed: u64, channel_id: Option<u32>) -> String {
    let mut rng = Rng(seed);
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        let mut segment = String::with_capacity(5);
        rng.push_letters(&mut segment, 5);
        // No spaces in URLs: the reference uses `_` where its strings have spaces.
        url.push_str(&segment.replace(' ', "_"));
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    if let Some(id) = channel_id {
        url.push_str(&format!("&channel_id={id}"));
    }
    url
}

/// Generates the events of one stream: every event is a function of the generator's timing
/// parameters and its event number.
#[derive(Debug, Clone)]
pub struct Generator {
    first_event_time_ms: i64,
    events_per_second: u64,
    channels: &'static Channels,
}

impl Generator {
    /// A generator whose event 0 happens at `first_event_time_ms` and whose event time advances
    /// `1 / events_per_second` seconds per event.
    pub fn new(first_event_time_ms: i64, events_per_second: u64) -> Result<Self, EngineError> {
        if events_per_second == 0 || events_per_second > MAX_EVENTS_PER_SECOND {
            return Err(EngineError::job(
                "nexmark.events_per_second_of_event_time",
                format!("must be between 1 and {MAX_EVENTS_PER_SECOND}, not {events_per_second}"),
            ));
        }
        Ok(Self {
            first_event_time_ms,
            events_per_second,
            channels: channels(),
        })
    }

    /// The type of event number `index`.
    pub fn kind_of(index: u64) -> EventKind {
        let rem = index % PROPORTION_DENOMINATOR;
        if rem < PERSON_PROPORTION {
            EventKind::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    /// The event time of event number `index`, in milliseconds.
    pub fn timestamp(&self, index: u64) -> Timestamp {
        let eps = self.events_per_second;
        // Whole seconds and the remainder apart: exact, and no overflow for any index.
        let ms = (index / eps)
            .saturating_mul(1000)
            .saturating_add((index % eps) * 1000 / eps);
        self.first_event_time_ms
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Event number `index`.
    pub fn event(&self, index: u64) -> Event {
        match Self::kind_of(index) {
            EventKind::Person => Event::Person(self.person(index)),
            EventKind::Auction => Event::Auction(self.auction(index)),
            _ => Event::Bid(self.bid(index)),
        }
    }

    /// The person of event number `index` (meaningful where `kind_of(index)` is a person).
    pub fn person(&self, index: u64) -> Person {
        let mut rng = Rng::for_event(index);
        let name = format!("{} {}", rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
        let mut email_address = rng.string(7);
        email_address.push('@');
        email_address.push_str(&rng.string(5));
        email_address.push_str(".com");
        let mut credit_card = String::with_capacity(19);
        for group in 0..4 {
            if group > 0 {
                credit_card.push(' ');
            }
            credit_card.push_str(&format!("{:04}", rng.below(10_000)));
        }
        Person {
            id: as_id(last_base0_person_id(index) + FIRST_PERSON_ID),
            name,
            email_address,
            credit_card,
            city: rng.pick(&US_CITIES).to_string(),
            state: rng.pick(&US_STATES).to_string(),
            date_time: self.timestamp(index),
            extra: rng.extra(),
        }
    }

    /// The auction of event number `index` (meaningful where `kind_of(index)` is an auction).
    pub fn auction(&self, index: u64) -> Auction {
        let mut rng = Rng::for_event(index);
        let seller = if rng.below(HOT_SELLER_RATIO) > 0 {
            // The hot seller.
            (last_base0_person_id(index) / HOT_BATCH) * HOT_BATCH
        } else {
            next_base0_person_id(index, &mut rng)
        };
        let initial_bid = rng.price();
        let date_time = self.timestamp(index);
        Auction {
            id: as_id(last_base0_auction_id(index) + FIRST_AUCTION_ID),
            item_name: rng.string(20),
            description: rng.string(100),
            initial_bid,
            reserve: initial_bid.saturating_add(rng.price()),
            date_time,
            expires: date_time.saturating_add(self.auction_length_ms(index, &mut rng)),
            seller: as_id(seller + FIRST_PERSON_ID),
            category: as_id(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES)),
            extra: rng.extra(),
        }
    }

    /// The bid of event number `index` (meaningful where `kind_of(index)` is a bid).
    pub fn bid(&self, index: u64) -> Bid {
        let mut rng = Rng::for_event(index);
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(index) / HOT_BATCH) * HOT_BATCH
        } else {
            next_base0_auction_id(index, &mut rng)
        };
        let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
            (last_base0_person_id(index) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            next_base0_person_id(index, &mut rng)
        };
        let price = rng.price();
        let Channels { hot, numbered } = self.channels;
        let channel = if rng.below(HOT_CHANNEL_RATIO) > 0 {
            &hot[rng.below(hot.len() as u64) as usize]
        } else {
            &numbered[rng.below(NUM_CHANNELS) as usize]
        };
        Bid {
            auction: as_id(auction + FIRST_AUCTION_ID),
            bidder: as_id(bidder + FIRST_PERSON_ID),
            price,
            channel: channel.name.clone(),
            url: channel.url.clone(),
            date_time: self.timestamp(index),
            extra: rng.extra(),
        }
    }

    /// How long an auction runs: random, up to twice the event time it takes for the number of
    /// in-flight auctions to be created, so that about that many are open at any time.
    fn auction_length_ms(&self, index: u64, rng: &mut Rng) -> i64 {
        let events_for_auctions =
            NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
        let now = self.timestamp(index);
        let later = self.timestamp(index.saturating_add(events_for_auctions));
        let horizon = u64::try_from(later.saturating_sub(now)).unwrap_or(0);
        let length = 1 + rng.below(horizon.saturating_mul(2).max(1));
        i64::try_from(length).unwrap_or(i64::MAX)
    }
}

/// Ids stay far below `i64::MAX` for any event number a run can reach (one id per event at
/// most); the conversion saturates rather than wraps all the same.
fn as_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// The 0-based id of the newest person at event `index`.
fn last_base0_person_id(index: u64) -> u64 {
    // Each epoch of 50 events opens with its one person (PERSON_PROPORTION is 1).
    const _: () = assert!(PERSON_PROPORTION == 1);
    index / PROPORTION_DENOMINATOR
}

/// The 0-based id of the newest auction at event `index` (0 before the first auction).
fn last_base0_auction_id(index: u64) -> u64 {
    let epoch = index / PROPORTION_DENOMINATOR;
    let offset = index % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // A person starts the epoch: the newest auction is the previous epoch's last.
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        // A bid: every auction of the epoch exists.
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    } else {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    }
}

/// A random person among the active ones, possibly a little past the newest.
fn next_base0_person_id(index: u64, rng: &mut Rng) -> u64 {
    let people = last_base0_person_id(index) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

/// A random auction among the in-flight ones, possibly a little past the newest.
fn next_base0_auction_id(index: u64, rng: &mut Rng) -> u64 {
    let newest = last_base0_auction_id(index);
    let oldest = newest.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    oldest + rng.below(newest - oldest + 1 + AUCTION_ID_LEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> Generator {
        Generator::new(1_767_225_600_000, 10_000).unwrap()
    }

    #[test]
    fn kinds_follow_the_1_3_46_mix() {
        let mut counts = [0u64; 3];
        for i in 0..5000 {
            match Generator::kind_of(i) {
                EventKind::Person => counts[0] += 1,
                EventKind::Auction => counts[1] += 1,
                _ => counts[2] += 1,
            }
        }
        assert_eq!(counts, [100, 300, 4600]);
        assert_eq!(Generator::kind_of(0), EventKind::Person);
        assert_eq!(Generator::kind_of(1), EventKind::Auction);
        assert_eq!(Generator::kind_of(4), EventKind::Bid);
        assert_eq!(Generator::kind_of(50), EventKind::Person);
    }

    #[test]
    fn events_are_a_pure_function_of_their_number() {
        let a = generator();
        let b = generator();
        for i in [0, 1, 4, 49, 50, 12_345, 1 << 40] {
            assert_eq!(a.event(i), b.event(i));
        }
        assert_ne!(a.event(4), a.event(5));
    }

    #[test]
    fn ids_refer_to_people_and_auctions_that_exist_or_are_about_to() {
        let g = generator();
        let mut people = 0i64;
        let mut auctions = 0i64;
        for i in 0..20_000 {
            match g.event(i) {
                Event::Person(p) => {
                    assert_eq!(p.id, FIRST_PERSON_ID as i64 + people);
                    people += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, FIRST_AUCTION_ID as i64 + auctions);
                    auctions += 1;
                    assert!(a.seller >= 1000 && a.seller < 1000 + people + 10);
                    assert!(a.reserve >= a.initial_bid);
                    assert!(a.expires > a.date_time);
                    assert_eq!(a.item_name.trim(), a.item_name);
                    assert!(a.item_name.len() < 20 && a.description.len() < 100);
                    assert!((10..15).contains(&a.category));
                }
                Event::Bid(b) => {
                    assert!(b.auction >= 1000 && b.auction < 1000 + auctions + 10);
                    assert!(b.bidder >= 1000 && b.bidder < 1000 + people + 10);
                    assert!((100..=100_000_000).contains(&b.price), "{}", b.price);
                    assert!(b.url.starts_with("https://www.nexmark.com/"));
                    assert!(!b.url.contains(' '));
                }
            }
        }
        assert_eq!(people, 400);
        assert_eq!(auctions, 1200);
    }

    #[test]
    fn half_the_bids_go_to_the_hot_auction() {
        let g = generator();
        let (mut hot, mut bids) = (0, 0);
        let mut hot_channel = 0;
        for i in 0..100_000 {
            if Generator::kind_of(i) == EventKind::Bid {
                let bid = g.bid(i);
                bids += 1;
                let hot_auction =
                    (last_base0_auction_id(i) / HOT_BATCH * HOT_BATCH + FIRST_AUCTION_ID) as i64;
                if bid.auction == hot_auction {
                    hot += 1;
                }
                if HOT_CHANNELS.contains(&&*bid.channel) {
                    hot_channel += 1;
                }
            }
        }
        let share = f64::from(hot) / f64::from(bids);
        // Random picks land on the hot auction now and then too.
        assert!((0.5..0.56).contains(&share), "{share}");
        let share = f64::from(hot_channel) / f64::from(bids);
        assert!((0.48..0.52).contains(&share), "{share}");
    }

    #[test]
    fn each_channel_has_one_url() {
        let g = generator();
        let mut urls = std::collections::HashMap::new();
        let mut with_id = 0;
        for i in 0..200_000 {
            if Generator::kind_of(i) == EventKind::Bid {
                let bid = g.bid(i);
                let url = urls.entry(bid.channel.clone()).or_insert(bid.url.clone());
                assert_eq!(*url, bid.url, "{}", bid.channel);
            }
        }
        for (channel, url) in &urls {
            assert!(url.starts_with("https://www.nexmark.com/"), "{url}");
            assert!(!url.contains(' '), "{url}");
            if url.contains("&channel_id=") {
                assert!(channel.starts_with("channel-"), "{channel}");
                with_id += 1;
            }
        }
        // Most of the 10,000 numbered channels are seen; nine in ten carry their id.
        let share = f64::from(with_id) / (urls.len() - HOT_CHANNELS.len()) as f64;
        assert!(urls.len() > 9000, "{}", urls.len());
        assert!((0.87..0.93).contains(&share), "{share}");
    }

    #[test]
    fn event_time_advances_by_the_inter_event_delay() {
        let g = generator();
        assert_eq!(g.timestamp(0), 1_767_225_600_000);
        assert_eq!(g.timestamp(9), 1_767_225_600_000);
        assert_eq!(g.timestamp(10), 1_767_225_600_001);
        assert_eq!(g.timestamp(10_000), 1_767_225_601_000);
        assert_eq!(g.timestamp(25_005), 1_767_225_602_500);
        // No overflow at the far end of the numbers.
        assert!(g.timestamp(u64::MAX) > g.timestamp(u64::MAX - 10_000_000));
        assert_eq!(Generator::new(1, 1).unwrap().timestamp(u64::MAX), i64::MAX);
        assert_eq!(g.event(12_345).date_time(), g.timestamp(12_345));
        assert!(Generator::new(0, 0).is_err());
        assert!(Generator::new(0, MAX_EVENTS_PER_SECOND + 1).is_err());
    }
}
