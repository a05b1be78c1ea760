//! The slice of the Salesforce data model the pipeline touches: which objects exist, their
//! fields (with the types that decide how SOQL filters and updates are checked), and the
//! relationships a query may follow. Everything is static so lookups never allocate.

use serde_json::Value;

/// The standard objects the simulator stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SObject {
    Account,
    Product2,
    Order,
    OrderItem,
}

/// How a field's values are typed, which is what SOQL and the update endpoints check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// The record's own id.
    Id,
    /// A lookup to another object (holds that object's id).
    Reference,
    /// Text with a maximum length in characters.
    Text(usize),
    /// A restricted picklist: only these values (or null when `nullable`).
    Picklist {
        values: &'static [&'static str],
        nullable: bool,
    },
    Double,
    Boolean,
    DateTime,
    Date,
}

#[derive(Debug)]
pub struct FieldDef {
    pub name: &'static str,
    /// Shown in error messages, as Salesforce names fields by label there.
    pub label: &'static str,
    pub kind: FieldKind,
    /// Writable through the REST update endpoints.
    pub updatable: bool,
}

/// A parent relationship: `Order.Account` follows `Order.AccountId`.
#[derive(Debug)]
pub struct ParentRel {
    pub name: &'static str,
    pub via_field: &'static str,
    pub target: SObject,
}

/// A child relationship: `Order.OrderItems` are the `OrderItem`s whose `OrderId` is the order.
#[derive(Debug)]
pub struct ChildRel {
    pub name: &'static str,
    pub child: SObject,
    pub via_field: &'static str,
}

const fn field(name: &'static str, label: &'static str, kind: FieldKind) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        updatable: false,
    }
}

const fn writable(name: &'static str, label: &'static str, kind: FieldKind) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        updatable: true,
    }
}

pub const ACTIVATION_STATUS_VALUES: &[&str] = &["Activating", "Activated", "Failed"];
pub const ORDER_STATUS_VALUES: &[&str] = &["Draft", "Activated"];

const ACCOUNT_FIELDS: &[FieldDef] = &[
    field("Id", "Account ID", FieldKind::Id),
    field("Name", "Account Name", FieldKind::Text(255)),
    field("WH_Account__c", "WH Account", FieldKind::Text(50)),
    field("CreatedDate", "Created Date", FieldKind::DateTime),
    field(
        "LastModifiedDate",
        "Last Modified Date",
        FieldKind::DateTime,
    ),
];

const PRODUCT_FIELDS: &[FieldDef] = &[
    field("Id", "Product ID", FieldKind::Id),
    field("Name", "Product Name", FieldKind::Text(255)),
    field("ProductCode", "Product Code", FieldKind::Text(255)),
    field("IsActive", "Active", FieldKind::Boolean),
    field("WH_Product_ID__c", "WH Product ID", FieldKind::Text(50)),
    // A free-text field in this org, so that tests can seed values the mapping must refuse.
    field("Billing_Cycle__c", "Billing Cycle", FieldKind::Text(40)),
    field("CreatedDate", "Created Date", FieldKind::DateTime),
    field(
        "LastModifiedDate",
        "Last Modified Date",
        FieldKind::DateTime,
    ),
];

const ORDER_FIELDS: &[FieldDef] = &[
    field("Id", "Order ID", FieldKind::Id),
    field("AccountId", "Account ID", FieldKind::Reference),
    field("OrderNumber", "Order Number", FieldKind::Text(30)),
    writable(
        "Status",
        "Status",
        FieldKind::Picklist {
            values: ORDER_STATUS_VALUES,
            nullable: false,
        },
    ),
    field("EffectiveDate", "Order Start Date", FieldKind::Date),
    writable(
        "Activation_Status__c",
        "Activation Status",
        FieldKind::Picklist {
            values: ACTIVATION_STATUS_VALUES,
            nullable: true,
        },
    ),
    writable("WHMCS_Order_ID__c", "WHMCS Order ID", FieldKind::Text(50)),
    writable(
        "Activation_Error_Code__c",
        "Activation Error Code",
        FieldKind::Text(50),
    ),
    writable(
        "Activation_Error_Message__c",
        "Activation Error Message",
        FieldKind::Text(255),
    ),
    field("CreatedDate", "Created Date", FieldKind::DateTime),
    field(
        "LastModifiedDate",
        "Last Modified Date",
        FieldKind::DateTime,
    ),
];

const ORDER_ITEM_FIELDS: &[FieldDef] = &[
    field("Id", "Order Product ID", FieldKind::Id),
    field("OrderId", "Order ID", FieldKind::Reference),
    field("Product2Id", "Product ID", FieldKind::Reference),
    field(
        "OrderItemNumber",
        "Order Product Number",
        FieldKind::Text(30),
    ),
    field("Quantity", "Quantity", FieldKind::Double),
    field("UnitPrice", "Unit Price", FieldKind::Double),
    field("CreatedDate", "Created Date", FieldKind::DateTime),
];

const ORDER_PARENTS: &[ParentRel] = &[ParentRel {
    name: "Account",
    via_field: "AccountId",
    target: SObject::Account,
}];

const ORDER_ITEM_PARENTS: &[ParentRel] = &[
    ParentRel {
        name: "Order",
        via_field: "OrderId",
        target: SObject::Order,
    },
    ParentRel {
        name: "Product2",
        via_field: "Product2Id",
        target: SObject::Product2,
    },
];

const ORDER_CHILDREN: &[ChildRel] = &[ChildRel {
    name: "OrderItems",
    child: SObject::OrderItem,
    via_field: "OrderId",
}];

impl SObject {
    pub const ALL: [SObject; 4] = [
        SObject::Account,
        SObject::Product2,
        SObject::Order,
        SObject::OrderItem,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SObject::Account => "Account",
            SObject::Product2 => "Product2",
            SObject::Order => "Order",
            SObject::OrderItem => "OrderItem",
        }
    }

    /// The three-character key prefix that starts every id of this object.
    pub fn key_prefix(self) -> &'static str {
        match self {
            SObject::Account => "001",
            SObject::Product2 => "01t",
            SObject::Order => "801",
            SObject::OrderItem => "802",
        }
    }

    /// API names are case-insensitive in Salesforce.
    pub fn from_name(name: &str) -> Option<SObject> {
        Self::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(name))
    }

    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            SObject::Account => ACCOUNT_FIELDS,
            SObject::Product2 => PRODUCT_FIELDS,
            SObject::Order => ORDER_FIELDS,
            SObject::OrderItem => ORDER_ITEM_FIELDS,
        }
    }

    pub fn field(self, name: &str) -> Option<&'static FieldDef> {
        self.fields()
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    pub fn parent(self, name: &str) -> Option<&'static ParentRel> {
        let parents: &'static [ParentRel] = match self {
            SObject::Order => ORDER_PARENTS,
            SObject::OrderItem => ORDER_ITEM_PARENTS,
            SObject::Account | SObject::Product2 => &[],
        };
        parents.iter().find(|r| r.name.eq_ignore_ascii_case(name))
    }

    pub fn child(self, name: &str) -> Option<&'static ChildRel> {
        let children: &'static [ChildRel] = match self {
            SObject::Order => ORDER_CHILDREN,
            _ => &[],
        };
        children.iter().find(|r| r.name.eq_ignore_ascii_case(name))
    }
}

/// Why a value cannot be stored in a field; rendered the way Salesforce words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValueError {
    pub status_code: &'static str,
    pub message: String,
}

impl FieldDef {
    /// Checks (and normalises) a value written through the REST API.
    pub fn check_value(&self, value: &Value) -> Result<Value, FieldValueError> {
        let bad_type = || FieldValueError {
            status_code: "JSON_PARSER_ERROR",
            message: format!(
                "Cannot deserialize instance of {} from {}",
                self.type_name(),
                kind_of(value)
            ),
        };
        match self.kind {
            FieldKind::Text(max) => match value {
                Value::Null => Ok(Value::Null),
                // Salesforce's JSON reader accepts scalars for text fields and keeps their text.
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if text.chars().count() > max {
                        Err(FieldValueError {
                            status_code: "STRING_TOO_LONG",
                            message: format!(
                                "{}: data value too large: {} (max length={max})",
                                self.label,
                                truncate_for_message(&text)
                            ),
                        })
                    } else if text.is_empty() {
                        // An empty string clears a text field, as in Salesforce.
                        Ok(Value::Null)
                    } else {
                        Ok(Value::String(text))
                    }
                }
                _ => Err(bad_type()),
            },
            FieldKind::Picklist { values, nullable } => {
                let text = match value {
                    Value::Null => None,
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => Some(s.as_str()),
                    _ => return Err(bad_type()),
                };
                match text {
                    None if nullable => Ok(Value::Null),
                    None => Err(FieldValueError {
                        status_code: "REQUIRED_FIELD_MISSING",
                        message: format!("Required fields are missing: [{}]", self.name),
                    }),
                    Some(t) => values
                        .iter()
                        .find(|v| v.eq_ignore_ascii_case(t))
                        .map(|v| Value::String((*v).to_owned()))
                        .ok_or_else(|| FieldValueError {
                            status_code: "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                            message: format!(
                                "{}: bad value for restricted picklist field: {t}",
                                self.label
                            ),
                        }),
                }
            }
            FieldKind::Double => match value {
                Value::Null | Value::Number(_) => Ok(value.clone()),
                _ => Err(bad_type()),
            },
            FieldKind::Boolean => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err(bad_type()),
            },
            FieldKind::Id | FieldKind::Reference | FieldKind::DateTime | FieldKind::Date => {
                match value {
                    Value::Null | Value::String(_) => Ok(value.clone()),
                    _ => Err(bad_type()),
                }
            }
        }
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            FieldKind::Double => "double",
            FieldKind::Boolean => "boolean",
            _ => "String",
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "VALUE_NULL",
        Value::Bool(_) => "VALUE_TRUE/VALUE_FALSE",
        Value::Number(_) => "VALUE_NUMBER",
        Value::String(_) => "VALUE_STRING",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}

/// Salesforce echoes the value in STRING_TOO_LONG messages; a bounded echo keeps bodies small.
fn truncate_for_message(text: &str) -> String {
    const ECHO: usize = 300;
    if text.chars().count() <= ECHO {
        text.to_owned()
    } else {
        let head: String = text.chars().take(ECHO).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_are_case_insensitive_and_canonical() {
        assert_eq!(SObject::from_name("order"), Some(SObject::Order));
        assert_eq!(
            SObject::Order.field("activation_status__C").map(|f| f.name),
            Some("Activation_Status__c")
        );
        assert!(SObject::Order.parent("account").is_some());
        assert!(SObject::Order.child("orderitems").is_some());
        assert!(SObject::Account.child("OrderItems").is_none());
    }

    #[test]
    fn restricted_picklist_and_lengths() {
        let status = SObject::Order.field("Activation_Status__c").unwrap();
        assert_eq!(
            status.check_value(&json!("activated")).unwrap(),
            json!("Activated")
        );
        assert_eq!(status.check_value(&Value::Null).unwrap(), Value::Null);
        let err = status.check_value(&json!("Done")).unwrap_err();
        assert_eq!(err.status_code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
        let msg = SObject::Order.field("Activation_Error_Message__c").unwrap();
        assert!(msg.check_value(&json!("x".repeat(255))).is_ok());
        let err = msg.check_value(&json!("x".repeat(256))).unwrap_err();
        assert_eq!(err.status_code, "STRING_TOO_LONG");
        let order_status = SObject::Order.field("Status").unwrap();
        assert_eq!(
            order_status
                .check_value(&Value::Null)
                .unwrap_err()
                .status_code,
            "REQUIRED_FIELD_MISSING"
        );
    }
}
