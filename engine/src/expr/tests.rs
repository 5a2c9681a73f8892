use proptest::prelude::*;

use super::*;
use crate::data::Field;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("auction", DataType::Int),
        Field::new("price", DataType::Float),
        Field::new("channel", DataType::String),
        Field::new("at", DataType::Timestamp),
        Field::new("ok", DataType::Bool),
        Field::new("odd name", DataType::Int),
    ])
}

fn row() -> Row {
    vec![
        Value::Int(246),
        Value::Float(1500.5),
        Value::Str("GooGle".into()),
        Value::Time(10_000),
        Value::Null,
        Value::Int(-3),
    ]
}

fn eval(text: &str) -> Value {
    Expr::parse(text)
        .unwrap()
        .bind(&schema())
        .unwrap()
        .eval(&row())
}

fn message(err: EngineError) -> String {
    match err {
        EngineError::Expr { expr, message } => format!("`{expr}`: {message}"),
        other => panic!("not an expression error: {other}"),
    }
}

fn parse_error(text: &str) -> String {
    message(Expr::parse(text).unwrap_err())
}

fn bind_error(text: &str) -> String {
    message(Expr::parse(text).unwrap().bind(&schema()).unwrap_err())
}

#[test]
fn job_file_examples() {
    assert_eq!(
        eval("price > 1000 and auction % 123 = 0"),
        Value::Bool(true)
    );
    assert_eq!(eval("price * 0.908"), Value::Float(1500.5 * 0.908));
    assert_eq!(eval("lower(channel) = 'google'"), Value::Bool(true));
    assert_eq!(eval("`odd name` + 1"), Value::Int(-2));
}

#[test]
fn precedence_and_associativity() {
    assert_eq!(eval("1 + 2 * 3"), Value::Int(7));
    assert_eq!(eval("(1 + 2) * 3"), Value::Int(9));
    assert_eq!(eval("10 - 4 - 3"), Value::Int(3));
    assert_eq!(eval("100 / 10 / 5"), Value::Int(2));
    assert_eq!(eval("-2 * 3 + 1"), Value::Int(-5));
    assert_eq!(eval("- - 2"), Value::Int(2));
    assert_eq!(eval("7 % 4 * 2"), Value::Int(6));
    // `and` binds tighter than `or`; `not` than `and`; comparisons tighter than `not`.
    assert_eq!(eval("true or false and false"), Value::Bool(true));
    assert_eq!(eval("(true or false) and false"), Value::Bool(false));
    assert_eq!(eval("not 1 = 2 and true"), Value::Bool(true));
    assert_eq!(eval("not (1 = 1 and false)"), Value::Bool(true));
    assert_eq!(eval("1 + 1 = 2"), Value::Bool(true));
    assert_eq!(eval("NOT TRUE Or False"), Value::Bool(false));
}

#[test]
fn int_arithmetic_stays_int_and_never_panics() {
    assert_eq!(eval("7 / 2"), Value::Int(3));
    assert_eq!(eval("7.0 / 2"), Value::Float(3.5));
    assert_eq!(eval("auction / 0"), Value::Null);
    assert_eq!(eval("auction % 0"), Value::Null);
    assert_eq!(eval("price / 0"), Value::Null);
    assert_eq!(eval("9223372036854775807 + 1"), Value::Int(i64::MIN));
    assert_eq!(
        eval("(-9223372036854775807 - 1) / -1"),
        Value::Int(i64::MIN)
    );
    assert_eq!(eval("(-9223372036854775807 - 1) % -1"), Value::Int(0));
    assert_eq!(eval("abs(-9223372036854775807 - 1)"), Value::Int(i64::MIN));
}

#[test]
fn three_valued_logic() {
    assert_eq!(eval("null and false"), Value::Bool(false));
    assert_eq!(eval("null and true"), Value::Null);
    assert_eq!(eval("null or true"), Value::Bool(true));
    assert_eq!(eval("null or false"), Value::Null);
    assert_eq!(eval("not ok"), Value::Null);
    assert_eq!(eval("ok = true"), Value::Null);
    assert_eq!(eval("auction + null"), Value::Null);
    assert_eq!(eval("ok is null"), Value::Bool(true));
    assert_eq!(eval("ok is not null"), Value::Bool(false));
    assert_eq!(eval("auction is null"), Value::Bool(false));
    // `in`: a match wins; otherwise a null item makes it unknown.
    assert_eq!(eval("auction in (1, 246)"), Value::Bool(true));
    assert_eq!(eval("auction in (1, null)"), Value::Null);
    assert_eq!(eval("auction in (1, 2)"), Value::Bool(false));
    assert_eq!(eval("auction not in (1, 2)"), Value::Bool(true));
    assert_eq!(eval("auction not in (246, null)"), Value::Bool(false));
    assert_eq!(eval("null in (1, 2)"), Value::Null);

    let predicate = Expr::parse("ok or auction > 1000")
        .unwrap()
        .bind(&schema())
        .unwrap();
    assert_eq!(predicate.eval(&row()), Value::Null);
    assert!(!predicate.eval_bool(&row()), "null is not true");
}

#[test]
fn comparisons_across_numeric_and_time_types() {
    assert_eq!(eval("auction < price"), Value::Bool(true));
    assert_eq!(eval("at = 10000"), Value::Bool(true));
    assert_eq!(eval("at >= at - 1"), Value::Bool(true));
    assert_eq!(eval("at + 5"), Value::Time(10_005));
    assert_eq!(eval("at - (at - 250)"), Value::Int(250));
    assert_eq!(
        eval("'a' < 'b' and 'b' <> 'c' and 'x' == 'x'"),
        Value::Bool(true)
    );
    assert_eq!(eval("0.0 / 1 != 1"), Value::Bool(true));
}

#[test]
fn functions() {
    assert_eq!(eval("upper(channel)"), Value::Str("GOOGLE".into()));
    assert_eq!(eval("length('héllo')"), Value::Int(5));
    assert_eq!(
        eval("concat(channel, '-', auction, null, '-', ok is null)"),
        Value::Str("GooGle-246-true".into())
    );
    assert_eq!(
        eval("concat(at)"),
        Value::Str("1970-01-01T00:00:10.000Z".into())
    );
    assert_eq!(eval("abs(`odd name`)"), Value::Int(3));
    assert_eq!(eval("abs(-2.5)"), Value::Float(2.5));
    assert_eq!(eval("floor(price)"), Value::Float(1500.0));
    assert_eq!(eval("ceil(price)"), Value::Float(1501.0));
    assert_eq!(eval("floor(auction)"), Value::Int(246));
    assert_eq!(eval("round(price)"), Value::Float(1501.0));
    assert_eq!(eval("round(2.345, 2)"), Value::Float(2.35));
    assert_eq!(eval("round(auction, -1)"), Value::Int(250));
    assert_eq!(eval("round(-auction, -1)"), Value::Int(-250));
    assert_eq!(eval("round(auction, -2)"), Value::Int(200));
    assert_eq!(eval("round(auction, -30)"), Value::Int(0));
    assert_eq!(eval("coalesce(ok, false)"), Value::Bool(false));
    assert_eq!(eval("coalesce(null, auction, 1)"), Value::Int(246));
    assert_eq!(
        eval("if(price > 1000, 'big', 'small')"),
        Value::Str("big".into())
    );
    assert_eq!(
        eval("if(ok, 1, 2)"),
        Value::Int(2),
        "a null condition is false"
    );
}

#[test]
fn mixed_int_and_float_results_are_widened() {
    let bound = Expr::parse("if(auction > 0, auction, price)")
        .unwrap()
        .bind(&schema())
        .unwrap();
    assert_eq!(bound.data_type(), DataType::Float);
    assert_eq!(bound.eval(&row()), Value::Float(246.0));
    let bound = Expr::parse("coalesce(null, auction, 2.5)")
        .unwrap()
        .bind(&schema())
        .unwrap();
    assert_eq!(bound.eval(&row()), Value::Float(246.0));
}

#[test]
fn result_types() {
    let ty = |text: &str| {
        Expr::parse(text)
            .unwrap()
            .bind(&schema())
            .unwrap()
            .data_type()
    };
    assert_eq!(ty("auction"), DataType::Int);
    assert_eq!(ty("auction * 2"), DataType::Int);
    assert_eq!(ty("auction * 2.0"), DataType::Float);
    assert_eq!(ty("at + 1"), DataType::Timestamp);
    assert_eq!(ty("at - at"), DataType::Int);
    assert_eq!(ty("auction in (1)"), DataType::Bool);
    assert_eq!(ty("length(channel)"), DataType::Int);
    assert_eq!(ty("if(ok, null, 'x')"), DataType::String);
}

#[test]
fn short_rows_and_wrong_values_give_null() {
    let bound = Expr::parse("`odd name` * 2 + lower(channel)").map(|e| e.bind(&schema()));
    // The type error is caught at bind time...
    assert!(bound.unwrap().is_err());
    // ...and a row that does not match its schema evaluates to null rather than panicking.
    let bound = Expr::parse("`odd name` * 2")
        .unwrap()
        .bind(&schema())
        .unwrap();
    assert_eq!(bound.eval(&vec![Value::Int(1)]), Value::Null);
    let mut wrong = row();
    wrong[5] = Value::Str("x".into());
    assert_eq!(bound.eval(&wrong), Value::Null);
}

#[test]
fn parse_errors_name_the_position_and_token() {
    let e = parse_error("price > ");
    assert!(
        e.contains("column 9") && e.contains("end of the expression"),
        "{e}"
    );
    let e = parse_error("price >> 3");
    assert!(e.contains("column 8") && e.contains("`>`"), "{e}");
    let e = parse_error("(price > 3");
    assert!(e.contains("expected `)`"), "{e}");
    let e = parse_error("price > 3)");
    assert!(e.contains("without a matching `(`"), "{e}");
    let e = parse_error("price 3");
    assert!(e.contains("column 7") && e.contains("number `3`"), "{e}");
    let e = parse_error("sqrt(price)");
    assert!(
        e.contains("unknown function `sqrt`") && e.contains("lower"),
        "{e}"
    );
    let e = parse_error("channel = \"google\"");
    assert!(e.contains("single quotes"), "{e}");
    let e = parse_error("1 < 2 < 3");
    assert!(e.contains("do not chain"), "{e}");
    let e = parse_error("a is 3");
    assert!(e.contains("`null` after `is`"), "{e}");
    let e = parse_error("a in 3");
    assert!(e.contains("`(` after `in`"), "{e}");
    let e = parse_error("a in (1,)");
    assert!(e.contains("value of the `in` list"), "{e}");
    let e = parse_error("and > 1");
    assert!(e.contains("keyword `and`"), "{e}");
    let e = parse_error("'héllo' ? 1");
    assert!(e.contains("column 9") && e.contains("`?`"), "{e}");
    let e = parse_error("");
    assert!(e.contains("expected a value"), "{e}");
    let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    let e = parse_error(&deep);
    assert!(e.contains("nested too deeply"), "{e}");
    let long = vec!["1"; 200].join(" + ");
    let e = parse_error(&long);
    assert!(e.contains("nested too deeply"), "{e}");
    let e = parse_error(&format!(
        "{}({})",
        "not ".repeat(40),
        vec!["true"; 40].join(" and ")
    ));
    assert!(e.contains("nested too deeply"), "{e}");
    // Just under the limit is fine.
    let ok = vec!["1"; MAX_DEPTH].join(" + ");
    assert_eq!(
        Expr::parse(&ok)
            .unwrap()
            .bind(&schema())
            .unwrap()
            .eval(&row()),
        Value::Int(MAX_DEPTH as i64)
    );
}

#[test]
fn bind_errors_name_the_problem() {
    let e = bind_error("prce > 3");
    assert!(
        e.contains("unknown field `prce`")
            && e.contains("auction, price, channel, at, ok, odd name"),
        "{e}"
    );
    let e = bind_error("channel + 1");
    assert!(
        e.contains("`+`") && e.contains("string") && e.contains("concat"),
        "{e}"
    );
    let e = bind_error("channel > 1");
    assert!(e.contains("cannot compare a string with an int"), "{e}");
    let e = bind_error("price and ok");
    assert!(e.contains("`and` needs a bool, not a float"), "{e}");
    let e = bind_error("not auction");
    assert!(e.contains("`not` needs a bool"), "{e}");
    let e = bind_error("-channel");
    assert!(e.contains("cannot negate a string"), "{e}");
    let e = bind_error("lower(price)");
    assert!(
        e.contains("lower() needs a string as argument 1, not a float"),
        "{e}"
    );
    let e = bind_error("lower(channel, channel)");
    assert!(e.contains("lower() takes 1 argument, not 2"), "{e}");
    let e = bind_error("if(ok, 1)");
    assert!(e.contains("if() takes 3 arguments, not 2"), "{e}");
    let e = bind_error("if(auction, 1, 2)");
    assert!(e.contains("if() needs a bool as argument 1"), "{e}");
    let e = bind_error("if(ok, 1, 'x')");
    assert!(e.contains("different types: int and string"), "{e}");
    let e = bind_error("coalesce()");
    assert!(e.contains("at least 1 argument"), "{e}");
    let e = bind_error("auction in (1, 'x')");
    assert!(e.contains("`in` cannot compare"), "{e}");
    let e = bind_error("at * 2");
    assert!(e.contains("`*`") && e.contains("timestamp"), "{e}");
    let e = bind_error("round(price, 1.5)");
    assert!(e.contains("an int (the digits to keep)"), "{e}");
    let e = bind_error("null");
    assert!(e.contains("always null"), "{e}");
}

#[test]
fn named_entries() {
    let (name, expr) = parse_named("price").unwrap();
    assert_eq!((name.as_str(), expr.field_name()), ("price", Some("price")));
    let (name, expr) = parse_named("`odd name`").unwrap();
    assert_eq!(name, "odd name");
    assert_eq!(expr.field_name(), Some("odd name"));
    let (name, expr) = parse_named("euros = price * 0.908").unwrap();
    assert_eq!(name, "euros");
    assert_eq!(expr.text(), "price * 0.908");
    let (name, expr) = parse_named("big = price > 10").unwrap();
    assert_eq!(name, "big");
    assert_eq!(expr.text(), "price > 10");
    let (name, _) = parse_named("`a b` = 1").unwrap();
    assert_eq!(name, "a b");
    let e = message(parse_named("price * 2").unwrap_err());
    assert!(e.contains("needs a name"), "{e}");
    let e = message(parse_named("x = ").unwrap_err());
    assert!(
        e.contains("`x = `") && e.contains("expression after `=`"),
        "{e}"
    );
    // `==` is a comparison, never the name separator.
    let e = message(parse_named("a == 1").unwrap_err());
    assert!(e.contains("needs a name"), "{e}");
}

fn token_soup() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "(",
        ")",
        ",",
        "+",
        "-",
        "*",
        "/",
        "%",
        "=",
        "==",
        "!=",
        "<>",
        "<",
        "<=",
        ">",
        ">=",
        " and ",
        " or ",
        " not ",
        " in ",
        " is ",
        " null ",
        "true",
        "false",
        "price",
        "auction",
        "channel",
        "at",
        "ok",
        "`odd name`",
        "lower",
        "concat",
        "if",
        "round",
        "coalesce",
        "0",
        "1",
        "-1",
        "2.5",
        "'x'",
        "9223372036854775807",
        "`",
        "'",
        "\"",
        "é",
        " ",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,64}") {
        let _ = Expr::parse(&text);
        let _ = parse_named(&text);
    }

    #[test]
    fn pipeline_never_panics_on_token_soup(text in token_soup()) {
        if let Ok(expr) = Expr::parse(&text)
            && let Ok(bound) = expr.bind(&schema())
        {
            let _ = bound.eval(&row());
            let _ = bound.eval(&vec![Value::Null; 6]);
            let _ = bound.eval(&Vec::new());
            let _ = bound.eval_bool(&row());
        }
        let _ = parse_named(&text);
    }
}

fn pair() -> Schema {
    Schema::new(vec![
        Field::new("x", DataType::Int),
        Field::new("y", DataType::Int),
    ])
}

proptest! {
    #[test]
    fn int_arithmetic_wraps_and_divides_by_zero_to_null(
        x in prop_oneof![any::<i64>(), -3i64..3, Just(i64::MIN)],
        y in prop_oneof![any::<i64>(), -3i64..3, Just(-1i64)],
    ) {
        let row = vec![Value::Int(x), Value::Int(y)];
        let eval = |text: &str| Expr::parse(text).unwrap().bind(&pair()).unwrap().eval(&row);
        prop_assert_eq!(eval("x + y"), Value::Int(x.wrapping_add(y)));
        prop_assert_eq!(eval("x - y"), Value::Int(x.wrapping_sub(y)));
        prop_assert_eq!(eval("x * y"), Value::Int(x.wrapping_mul(y)));
        let (div, rem) = if y == 0 {
            (Value::Null, Value::Null)
        } else {
            (Value::Int(x.wrapping_div(y)), Value::Int(x.wrapping_rem(y)))
        };
        prop_assert_eq!(eval("x / y"), div);
        prop_assert_eq!(eval("x % y"), rem);
        prop_assert_eq!(eval("-x"), Value::Int(x.wrapping_neg()));
        prop_assert_eq!(eval("x < y"), Value::Bool(x < y));
        prop_assert_eq!(eval("x in (y, 7)"), Value::Bool(x == y || x == 7));
    }
}
