//! Nexmark's three event types, their schemas, and their rows.
//!
//! The field order of each schema is the order of the values in its rows; the combined schema
//! of [`EventKind::All`] is `event_type` followed by every person, auction and bid field with
//! its type's prefix, null where the event is of another type.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::data::{DataType, Field, Row, Schema, SchemaRef, Timestamp, Value};
use crate::text::Text;

/// Which events a Nexmark source emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Only bids (46 of every 50 events).
    #[default]
    Bid,
    /// Only auctions (3 of every 50 events).
    Auction,
    /// Only people (1 of every 50 events).
    Person,
    /// Every event, in the combined schema.
    All,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Bid => "bid",
            EventKind::Auction => "auction",
            EventKind::Person => "person",
            EventKind::All => "all",
        }
    }

    /// Parses a kind as job files write it.
    pub fn parse(name: &str) -> Option<EventKind> {
        Some(match name {
            "bid" | "bids" => EventKind::Bid,
            "auction" | "auctions" => EventKind::Auction,
            "person" | "people" | "persons" => EventKind::Person,
            "all" => EventKind::All,
            _ => return None,
        })
    }
}

/// The `event_type` of a person in the combined schema.
pub const EVENT_TYPE_PERSON: i64 = 0;
/// The `event_type` of an auction in the combined schema.
pub const EVENT_TYPE_AUCTION: i64 = 1;
/// The `event_type` of a bid in the combined schema.
pub const EVENT_TYPE_BID: i64 = 2;

/// A new user of the auction site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: Timestamp,
    pub extra: Text,
}

/// A new auction of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: Timestamp,
    pub expires: Timestamp,
    pub seller: i64,
    pub category: i64,
    pub extra: Text,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    /// In cents.
    pub price: i64,
    pub channel: Text,
    pub url: Text,
    pub date_time: Timestamp,
    pub extra: Text,
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event's time: the record timestamp the source gives it.
    pub fn date_time(&self) -> Timestamp {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The event's row in the combined schema of [`EventKind::All`].
    pub fn into_combined_row(self) -> Row {
        let mut row = Vec::with_capacity(COMBINED_LEN);
        match self {
            Event::Person(p) => {
                row.push(Value::Int(EVENT_TYPE_PERSON));
                row.extend(p.into_row());
                row.resize(COMBINED_LEN, Value::Null);
            }
            Event::Auction(a) => {
                row.push(Value::Int(EVENT_TYPE_AUCTION));
                row.resize(1 + PERSON_FIELDS.len(), Value::Null);
                row.extend(a.into_row());
                row.resize(COMBINED_LEN, Value::Null);
            }
            Event::Bid(b) => {
                row.push(Value::Int(EVENT_TYPE_BID));
                row.resize(1 + PERSON_FIELDS.len() + AUCTION_FIELDS.len(), Value::Null);
                row.extend(b.into_row());
            }
        }
        row
    }
}

impl Person {
    pub fn into_row(self) -> Row {
        vec![
            Value::Int(self.id),
            Value::Str(self.name.into()),
            Value::Str(self.email_address.into()),
            Value::Str(self.credit_card.into()),
            Value::Str(self.city.into()),
            Value::Str(self.state.into()),
            Value::Time(self.date_time),
            Value::Str(self.extra),
        ]
    }
}

impl Auction {
    pub fn into_row(self) -> Row {
        vec![
            Value::Int(self.id),
            Value::Str(self.item_name.into()),
            Value::Str(self.description.into()),
            Value::Int(self.initial_bid),
            Value::Int(self.reserve),
            Value::Time(self.date_time),
            Value::Time(self.expires),
            Value::Int(self.seller),
            Value::Int(self.category),
            Value::Str(self.extra),
        ]
    }
}

impl Bid {
    pub fn into_row(self) -> Row {
        vec![
            Value::Int(self.auction),
            Value::Int(self.bidder),
            Value::Int(self.price),
            Value::Str(self.channel),
            Value::Str(self.url),
            Value::Time(self.date_time),
            Value::Str(self.extra),
        ]
    }
}

// The fields of each type, in row order. `into_row` above must follow the same order.
const PERSON_FIELDS: [(&str, DataType); 8] = [
    ("id", DataType::Int),
    ("name", DataType::String),
    ("email_address", DataType::String),
    ("credit_card", DataType::String),
    ("city", DataType::String),
    ("state", DataType::String),
    ("date_time", DataType::Timestamp),
    ("extra", DataType::String),
];

const AUCTION_FIELDS: [(&str, DataType); 10] = [
    ("id", DataType::Int),
    ("item_name", DataType::String),
    ("description", DataType::String),
    ("initial_bid", DataType::Int),
    ("reserve", DataType::Int),
    ("date_time", DataType::Timestamp),
    ("expires", DataType::Timestamp),
    ("seller", DataType::Int),
    ("category", DataType::Int),
    ("extra", DataType::String),
];

const BID_FIELDS: [(&str, DataType); 7] = [
    ("auction", DataType::Int),
    ("bidder", DataType::Int),
    ("price", DataType::Int),
    ("channel", DataType::String),
    ("url", DataType::String),
    ("date_time", DataType::Timestamp),
    ("extra", DataType::String),
];

const COMBINED_LEN: usize = 1 + PERSON_FIELDS.len() + AUCTION_FIELDS.len() + BID_FIELDS.len();

fn fields(list: &[(&str, DataType)], prefix: &str) -> impl Iterator<Item = Field> {
    list.iter()
        .map(move |(name, data_type)| Field::new(format!("{prefix}{name}"), *data_type))
}

fn build_schema(kind: EventKind) -> Schema {
    Schema::new(match kind {
        EventKind::Person => fields(&PERSON_FIELDS, "").collect(),
        EventKind::Auction => fields(&AUCTION_FIELDS, "").collect(),
        EventKind::Bid => fields(&BID_FIELDS, "").collect(),
        EventKind::All => std::iter::once(Field::new("event_type", DataType::Int))
            .chain(fields(&PERSON_FIELDS, "person_"))
            .chain(fields(&AUCTION_FIELDS, "auction_"))
            .chain(fields(&BID_FIELDS, "bid_"))
            .collect(),
    })
}

/// The schema of the rows a Nexmark source of `kind` emits.
pub fn schema_for(kind: EventKind) -> SchemaRef {
    // Built once per kind: every source and planner of a process shares the same schema.
    static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        [
            Arc::new(build_schema(EventKind::Bid)),
            Arc::new(build_schema(EventKind::Auction)),
            Arc::new(build_schema(EventKind::Person)),
            Arc::new(build_schema(EventKind::All)),
        ]
    });
    let index = match kind {
        EventKind::Bid => 0,
        EventKind::Auction => 1,
        EventKind::Person => 2,
        EventKind::All => 3,
    };
    schemas[index].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid() -> Bid {
        Bid {
            auction: 1000,
            bidder: 1001,
            price: 250,
            channel: "Google".into(),
            url: "https://www.nexmark.com/google/item.htm?query=1".into(),
            date_time: 5,
            extra: "x".into(),
        }
    }

    #[test]
    fn rows_fit_their_schemas() {
        let person = Person {
            id: 1000,
            name: "Peter Shultz".into(),
            email_address: "a@b.com".into(),
            credit_card: "1234 1234 1234 1234".into(),
            city: "Boise".into(),
            state: "ID".into(),
            date_time: 3,
            extra: Text::from_static(""),
        };
        let auction = Auction {
            id: 1000,
            item_name: "item".into(),
            description: "desc".into(),
            initial_bid: 100,
            reserve: 200,
            date_time: 4,
            expires: 9,
            seller: 1000,
            category: 10,
            extra: Text::from_static(""),
        };
        for (kind, row) in [
            (EventKind::Person, person.clone().into_row()),
            (EventKind::Auction, auction.clone().into_row()),
            (EventKind::Bid, bid().into_row()),
        ] {
            let schema = schema_for(kind);
            assert_eq!(row.len(), schema.len(), "{kind:?}");
            for (value, field) in row.iter().zip(&schema.fields) {
                assert_eq!(value.data_type(), Some(field.data_type), "{}", field.name);
            }
        }
        let all = schema_for(EventKind::All);
        for event in [
            Event::Person(person),
            Event::Auction(auction),
            Event::Bid(bid()),
        ] {
            let row = event.into_combined_row();
            assert_eq!(row.len(), all.len());
            for (value, field) in row.iter().zip(&all.fields) {
                if let Some(t) = value.data_type() {
                    assert_eq!(t, field.data_type, "{}", field.name);
                }
            }
        }
    }

    #[test]
    fn combined_rows_put_each_type_under_its_prefix() {
        let all = schema_for(EventKind::All);
        let row = Event::Bid(bid()).into_combined_row();
        assert_eq!(row[0], Value::Int(EVENT_TYPE_BID));
        let price = all.index_of("bid_price").unwrap();
        assert_eq!(row[price], Value::Int(250));
        assert!(row[all.index_of("person_id").unwrap()].is_null());
        assert!(row[all.index_of("auction_seller").unwrap()].is_null());
        assert_eq!(all.index_of("event_type"), Some(0));
    }
}
