#!/usr/bin/env python3
"""Writes products.csv, the upload example's sample file (deterministic: same bytes every run).

3000 data rows under the header `Name,SKU,Category,Price,Quantity` (not the default column
order, mixed case, one extra column). Some names are quoted around commas, some hold doubled
quotes, some are multibyte UTF-8. 60 rows (2%) of each kind are bad: missing sku, missing name,
bad price, bad quantity, duplicate sku, malformed quotes; so 2640 rows import and 360 are
reported. tests/examples/import.cpp checks those counts.

    python3 examples/upload_progress/make_products.py [--rows N] [--out PATH]
"""
import argparse
import os
import random

CATEGORIES = {
    "KIT": ("Kitchen", ["Chef's Knife", "Cutting Board", "Skillet", "Saucepan", "Colander",
                        "Whisk", "Crème Brûlée Torch", "Espresso Cups", "Müsli Bowl"]),
    "OUT": ("Outdoor", ["Tent", "Sleeping Bag", "Headlamp", "Camping Stove", "Trekking Poles",
                        "Water Filter", "Hängematte"]),
    "OFF": ("Office", ["Notebook", "Desk Lamp", "Stapler", "Monitor Stand", "Gel Pens",
                       "Café Table Planner"]),
    "TOY": ("Toys", ["Building Blocks", "Puzzle", "Kite", "Yo-Yo", "Plush Bear",
                     "Spielzeug-Eisenbahn"]),
    "TEA": ("Tea", ["日本茶 Sencha", "Jasmine Pearls", "Earl Grey", "Rooibos", "Matcha Whisk"]),
}
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Stainless Steel", "Bamboo", "Organic", "Mini",
              "Heavy-Duty", "Vintage", "Travel"]
BAD_KINDS = ["missing sku", "missing name", "bad price", "bad quantity", "duplicate sku",
             "malformed quotes"]
BAD_PRICES = ["12.999", "-3.00", "abc", "\"1,299.00\"", "$5", "4.5.6", "1e3", ""]
BAD_QUANTITIES = ["-2", "3.5", "many", "1e3", "", "99999999999999999999", "+7"]


def quote(field):
    if any(c in field for c in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "products.csv"))
    args = parser.parse_args()

    rng = random.Random(4)
    per_kind = args.rows * 2 // 100
    kinds = [None] * (args.rows - per_kind * len(BAD_KINDS))
    for kind in BAD_KINDS:
        kinds += [kind] * per_kind
    rng.shuffle(kinds)
    # A duplicate needs an earlier good row to copy; make sure the first row is a good one.
    first_good = kinds.index(None)
    kinds[0], kinds[first_good] = kinds[first_good], kinds[0]

    lines = ["Name,SKU,Category,Price,Quantity"]
    good_skus = []
    next_number = 10000
    for kind in kinds:
        prefix = rng.choice(sorted(CATEGORIES))
        category, nouns = CATEGORIES[prefix]
        next_number += rng.randint(1, 7)
        sku = f"{prefix}-{next_number}"
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)}"
        roll = rng.random()
        if roll < 0.08:
            name += f", {rng.choice(['set of 2', 'large', 'blue', '500 ml'])}"  # quoted comma
        elif roll < 0.12:
            name = f'{rng.choice(["8", "10", "12"])}" {name}'  # doubled quotes when quoted
        cents = rng.randint(99, 49999)
        style = rng.random()
        if style < 0.05:
            price = str(cents // 100)  # "12"
        elif style < 0.10:
            price = f"{cents // 100}.{cents % 100 // 10}"  # "12.5"
        else:
            price = f"{cents // 100}.{cents % 100:02d}"  # "12.50"
        quantity = str(rng.randint(0, 500))

        name_field = quote(name)
        if kind == "missing sku":
            sku = ""
        elif kind == "missing name":
            name_field = rng.choice(["", "  "])
        elif kind == "bad price":
            price = rng.choice(BAD_PRICES)
        elif kind == "bad quantity":
            quantity = rng.choice(BAD_QUANTITIES)
        elif kind == "duplicate sku":
            sku = rng.choice(good_skus)
        elif kind == "malformed quotes":
            # A quote inside an unquoted field, or text after a closing quote.
            name_field = rng.choice([f'{name.replace(",", "")} "Pro"', f'"{name}" Pro'])
        if kind is None:
            good_skus.append(sku)
        lines.append(",".join([name_field, sku, category, price, quantity]))

    with open(args.out, "w", encoding="utf-8", newline="") as out:
        out.write("\n".join(lines) + "\n")
    print(f"{args.out}: {args.rows} rows, {len(good_skus)} good, "
          f"{per_kind} of each bad kind: {', '.join(BAD_KINDS)}")


if __name__ == "__main__":
    main()
