// The two bounded collections the dashboard keeps its recent history in: whatever the load,
// its memory stays the same size.

/** A fixed-size ring, oldest first when read. */
export class Ring<T> {
  private items: T[] = [];
  private head = 0;
  constructor(private readonly size: number) {}
  push(x: T): void {
    if (this.items.length < this.size) this.items.push(x);
    else {
      this.items[this.head] = x;
      this.head = (this.head + 1) % this.size;
    }
  }
  toArray(): T[] {
    return [...this.items.slice(this.head), ...this.items.slice(0, this.head)];
  }
  get length(): number {
    return this.items.length;
  }
}

/** Values with their times, dropped from the front as they leave the window (and beyond `cap`, the oldest). */
export class Window {
  private t: number[] = [];
  private v: number[] = [];
  private start = 0;
  constructor(
    private readonly ms: number,
    private readonly cap: number,
  ) {}
  push(at: number, value: number): void {
    this.t.push(at);
    this.v.push(value);
    if (this.t.length - this.start > this.cap) this.start++;
  }
  prune(now: number): void {
    while (this.start < this.t.length && this.t[this.start]! < now - this.ms) this.start++;
    // Compact once the dead front outweighs the live part.
    if (this.start > 1024 && this.start * 2 > this.t.length) {
      this.t = this.t.slice(this.start);
      this.v = this.v.slice(this.start);
      this.start = 0;
    }
  }
  get count(): number {
    return this.t.length - this.start;
  }
  values(): number[] {
    return this.v.slice(this.start);
  }
}
