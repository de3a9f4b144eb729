"""Every text the bot sends, in English and Russian. `t(locale, key, **values)`; unknown locales fall back to English."""

from __future__ import annotations

LOCALES = ("en", "ru")

TEXTS: dict[str, dict[str, str]] = {
    "unlinked": {
        "en": "This chat is not linked to a Time to DO account yet. In the app, open Settings → Telegram and press "
        "“Link”, or send /start <code> with the code it shows.",
        "ru": "Этот чат ещё не привязан к аккаунту Time to DO. В приложении откройте Настройки → Telegram и нажмите "
        "«Привязать» или отправьте /start <код> с показанным кодом.",
    },
    "linked": {
        "en": "Linked to {email}. Send a task as plain text, or /help to see what I can do.",
        "ru": "Чат привязан к {email}. Отправьте задачу обычным сообщением или /help — что я умею.",
    },
    "already_linked": {"en": "This chat is already linked to {email}.", "ru": "Этот чат уже привязан к {email}."},
    "link_invalid": {
        "en": "This link code is invalid, expired or already used. Ask the app for a new one.",
        "ru": "Код привязки неверный, просрочен или уже использован. Получите новый в приложении.",
    },
    "chat_taken": {
        "en": "This chat is linked to another account. Send /unlink there first.",
        "ru": "Этот чат привязан к другому аккаунту. Сначала отправьте /unlink.",
    },
    "unlinked_done": {
        "en": "Unlinked. I will not send anything here any more.",
        "ru": "Чат отвязан. Больше ничего сюда не пришлю.",
    },
    "help": {
        "en": "Send a task as plain text or with /add, e.g. “Call mom tomorrow at 18:00 #family !1”.\n"
        "/today — today and overdue\n/overdue — overdue\n/week — the next 7 days\n/list [#project] — open tasks\n"
        "/done <n> — complete task n of the last list (or reply to a task)\n"
        "/timer start <n> | stop — time tracking; /timer — what is running\n/report [week|month] — time totals\n"
        "/tz <Europe/Moscow> — time zone\n/lang ru|en — language\n/digest HH:MM|off — daily digest\n/unlink",
        "ru": "Отправьте задачу обычным сообщением или через /add, например «Позвонить маме завтра в 18:00 #семья !1».\n"
        "/today — сегодня и просроченные\n/overdue — просроченные\n/week — ближайшие 7 дней\n"
        "/list [#проект] — открытые задачи\n/done <n> — закрыть задачу n из последнего списка (или ответом на задачу)\n"
        "/timer start <n> | stop — учёт времени; /timer — что идёт сейчас\n/report [week|month] — итоги времени\n"
        "/tz <Europe/Moscow> — часовой пояс\n/lang ru|en — язык\n/digest ЧЧ:ММ|off — ежедневная сводка\n/unlink",
    },
    "pong": {"en": "🏓 pong — the bot is up.", "ru": "🏓 pong — бот на связи."},
    "unknown_command": {
        "en": "I don't know this command. /help lists what I can do.",
        "ru": "Не знаю такой команды. /help — список команд.",
    },
    "too_long": {
        "en": "That is too long for a task ({length} characters; at most {limit}). Nothing was saved.",
        "ru": "Слишком длинно для задачи ({length} символов; не больше {limit}). Ничего не сохранено.",
    },
    "add_usage": {"en": "Usage: /add <task text>", "ru": "Как пользоваться: /add <текст задачи>"},
    "added": {"en": "Added: {title}", "ru": "Добавлено: {title}"},
    "due": {"en": "Due: {due}", "ru": "Срок: {due}"},
    "repeats": {"en": "Repeats: {rule}", "ru": "Повтор: {rule}"},
    "project": {"en": "Project: #{name}", "ru": "Проект: #{name}"},
    "project_created": {"en": "Project: #{name} (new)", "ru": "Проект: #{name} (новый)"},
    "priority": {"en": "Priority: {p}", "ru": "Приоритет: {p}"},
    "no_tasks": {"en": "Nothing here. 🎉", "ru": "Здесь пусто. 🎉"},
    "list_today": {"en": "Today and overdue:", "ru": "Сегодня и просроченные:"},
    "list_overdue": {"en": "Overdue:", "ru": "Просроченные:"},
    "list_week": {"en": "The next 7 days:", "ru": "Ближайшие 7 дней:"},
    "list_all": {"en": "Open tasks:", "ru": "Открытые задачи:"},
    "list_project": {"en": "Open tasks in #{name}:", "ru": "Открытые задачи в #{name}:"},
    "no_project": {"en": "There is no project #{name}.", "ru": "Нет проекта #{name}."},
    "page": {"en": "Page {page}", "ru": "Страница {page}"},
    "done_usage": {
        "en": "Usage: /done <n> — n is the task's number in the last list; or reply /done to a task.",
        "ru": "Как пользоваться: /done <n> — номер задачи в последнем списке; или ответьте /done на задачу.",
    },
    "no_such_number": {
        "en": "There is no task number {n} in your last list. Show a list first: /today or /list.",
        "ru": "В вашем последнем списке нет задачи номер {n}. Сначала покажите список: /today или /list.",
    },
    "not_found": {"en": "Task not found.", "ru": "Задача не найдена."},
    "completed": {"en": "✅ Done: {title}", "ru": "✅ Готово: {title}"},
    "next_due": {"en": "🔁 Next: {due}", "ru": "🔁 Следующий раз: {due}"},
    "moved": {"en": "📅 {title} → {due}", "ru": "📅 {title} → {due}"},
    "timer_started": {"en": "▶ Timer started: {title}", "ru": "▶ Таймер запущен: {title}"},
    "timer_stopped": {"en": "⏹ Timer stopped: {title}, {duration}", "ru": "⏹ Таймер остановлен: {title}, {duration}"},
    "timer_running": {"en": "▶ Running: {title}, {duration}", "ru": "▶ Идёт: {title}, {duration}"},
    "timer_idle": {"en": "No timer is running.", "ru": "Таймер не запущен."},
    "timer_usage": {"en": "Usage: /timer start <n> | stop", "ru": "Как пользоваться: /timer start <n> | stop"},
    "no_title": {"en": "(no task)", "ru": "(без задачи)"},
    "report": {"en": "Time from {start} to {end}: {total}", "ru": "Время с {start} по {end}: {total}"},
    "report_usage": {"en": "Usage: /report [week|month]", "ru": "Как пользоваться: /report [week|month]"},
    "tz_set": {"en": "Time zone: {zone}", "ru": "Часовой пояс: {zone}"},
    "tz_usage": {
        "en": "Usage: /tz <zone>, e.g. /tz Europe/Moscow. Now: {zone}",
        "ru": "Как пользоваться: /tz <пояс>, например /tz Europe/Moscow. Сейчас: {zone}",
    },
    "tz_invalid": {"en": "Unknown time zone: {zone}", "ru": "Неизвестный часовой пояс: {zone}"},
    "lang_set": {"en": "Language: English", "ru": "Язык: русский"},
    "lang_usage": {"en": "Usage: /lang ru|en", "ru": "Как пользоваться: /lang ru|en"},
    "digest_set": {"en": "Daily digest at {time}.", "ru": "Ежедневная сводка в {time}."},
    "digest_off": {"en": "Daily digest is off.", "ru": "Ежедневная сводка выключена."},
    "digest_usage": {
        "en": "Usage: /digest HH:MM or /digest off",
        "ru": "Как пользоваться: /digest ЧЧ:ММ или /digest off",
    },
    "digest": {"en": "Good morning! Today:", "ru": "Доброе утро! Сегодня:"},
    "maintenance": {
        "en": "Time to DO is in maintenance (read-only). Nothing was changed; try again in a minute.",
        "ru": "Time to DO на обслуживании (только чтение). Ничего не изменено; попробуйте через минуту.",
    },
    "invalid": {"en": "Not saved: {detail}", "ru": "Не сохранено: {detail}"},
    "expired_button": {
        "en": "This button has expired. Show the list again.",
        "ru": "Эта кнопка устарела. Покажите список заново.",
    },
    "reminder": {"en": "⏰ Reminder: {title}", "ru": "⏰ Напоминание: {title}"},
    "snoozed": {"en": "⏰ Reminding again at {time}", "ru": "⏰ Напомню снова в {time}"},
    "btn_done": {"en": "✅ Done", "ru": "✅ Готово"},
    "btn_tomorrow": {"en": "Tomorrow", "ru": "Завтра"},
    "btn_plus_hour": {"en": "+1 h", "ru": "+1 ч"},
    "btn_plus_15": {"en": "⏰ +15 min", "ru": "⏰ +15 мин"},
    "btn_timer": {"en": "▶ Start timer", "ru": "▶ Таймер"},
    "btn_more": {"en": "More ›", "ru": "Ещё ›"},
    "btn_no_due": {"en": "No date", "ru": "Без срока"},
    "cmd_add": {"en": "Add a task", "ru": "Добавить задачу"},
    "cmd_today": {"en": "Today and overdue", "ru": "Сегодня и просроченные"},
    "cmd_overdue": {"en": "Overdue tasks", "ru": "Просроченные задачи"},
    "cmd_week": {"en": "The next 7 days", "ru": "Ближайшие 7 дней"},
    "cmd_list": {"en": "Open tasks [#project]", "ru": "Открытые задачи [#проект]"},
    "cmd_done": {"en": "Complete task n", "ru": "Закрыть задачу n"},
    "cmd_timer": {"en": "Timer: start <n> | stop", "ru": "Таймер: start <n> | stop"},
    "cmd_report": {"en": "Time report [week|month]", "ru": "Отчёт по времени [week|month]"},
    "cmd_tz": {"en": "Set the time zone", "ru": "Часовой пояс"},
    "cmd_lang": {"en": "Language ru|en", "ru": "Язык ru|en"},
    "cmd_help": {"en": "What I can do", "ru": "Что я умею"},
    "cmd_unlink": {"en": "Unlink this chat", "ru": "Отвязать чат"},
    "cmd_digest": {"en": "Daily digest HH:MM | off", "ru": "Ежедневная сводка ЧЧ:ММ | off"},
}

COMMANDS = (
    "add",
    "today",
    "overdue",
    "week",
    "list",
    "done",
    "timer",
    "report",
    "digest",
    "tz",
    "lang",
    "help",
    "unlink",
)


def locale_of(code: str | None) -> str:
    """A Telegram `language_code` or a user locale → one of LOCALES."""
    return "ru" if (code or "").lower().startswith(("ru", "uk", "be", "kk")) else "en"


def t(locale: str, key: str, **values: object) -> str:
    entry = TEXTS[key]
    text = entry.get(locale) or entry["en"]
    return text.format(**values) if values else text
